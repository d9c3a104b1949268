"""Telegram front end of Jarvis: formatting and the bot adapter."""
