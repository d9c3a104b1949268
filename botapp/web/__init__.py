"""The browser chat page: sign in, conversations, streamed answers, usage and Telegram linking."""
