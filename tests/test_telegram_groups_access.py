"""Groups (answer when addressed, one conversation per group, never mixed with private chats) and access."""

import pytest
from asgiref.sync import sync_to_async

from botapp.models import AccessPolicy, BotUser, Conversation, Message, Profile, Role, TelegramIdentity, UsageRecord
from tests.telegram_support import TOKEN, USERNAME, Running

pytest_plugins = ["tests.telegram_support"]
pytestmark = pytest.mark.django_db(transaction=True)

GROUP = -100500


async def test_group_answers_only_when_mentioned_or_replied_to(jarvis: Running):
    """In a group, chatter is ignored; a mention or a reply to Jarvis is answered, quoting the question."""
    jarvis.telegram.push_text(TOKEN, GROUP, "just chatting among ourselves", user_id=11)
    asked = jarvis.telegram.push_text(TOKEN, GROUP, f"@{USERNAME} what is 2+2?", user_id=11)
    [answer] = await jarvis.answered(GROUP)
    assert answer.text == "Echo: what is 2+2?"
    assert answer.reply_to_message_id == asked["message"]["message_id"]
    jarvis.telegram.push_text(TOKEN, GROUP, "and 3+3?", user_id=12, reply_to_message_id=answer.message_id)
    answers = await jarvis.answered(GROUP, 2)
    assert answers[1].text == "Echo: and 3+3?"
    assert len(jarvis.openai.chat_requests()) == 2
    assert not await Message.objects.filter(content__contains="chatting").aexists()


async def test_one_conversation_per_group_and_each_asker_is_the_sender(jarvis: Running):
    """Two people in a group share one conversation; each question is stored (and billed) as its asker's."""
    jarvis.telegram.push_text(TOKEN, GROUP, f"@{USERNAME} I am Ann", user_id=21, username="ann")
    await jarvis.answered(GROUP, 1)
    jarvis.telegram.push_text(TOKEN, GROUP, f"@{USERNAME} I am Bob", user_id=22, username="bob")
    await jarvis.answered(GROUP, 2)
    [conversation] = await sync_to_async(lambda: list(Conversation.objects.filter(telegram_chat_id=GROUP)))()
    senders = await sync_to_async(
        lambda: list(
            conversation.messages.filter(role=Role.USER)
            .order_by("id")
            .values_list("sender__telegram__telegram_id", flat=True)
        )
    )()
    assert senders == [21, 22]
    billed = await sync_to_async(
        lambda: sorted(UsageRecord.objects.values_list("user__telegram__telegram_id", flat=True))
    )()
    assert billed == [21, 22]
    history = jarvis.openai.chat_requests()[-1].body["messages"]
    assert [m["content"] for m in history[1:]] == ["I am Ann", "Echo: I am Ann", "I am Bob"]


async def test_group_and_private_contexts_never_mix(jarvis: Running):
    """What a person says in a group is not in the context of their private chat, and the other way round."""
    jarvis.telegram.push_text(TOKEN, 31, "private secret")
    await jarvis.answered(31)
    jarvis.telegram.push_text(TOKEN, GROUP, f"@{USERNAME} group question", user_id=31)
    await jarvis.answered(GROUP)
    group_request = jarvis.openai.chat_requests()[-1].body["messages"]
    assert all("secret" not in str(m["content"]) for m in group_request)
    jarvis.telegram.push_text(TOKEN, 31, "private again")
    await jarvis.answered(31, 2)
    private_request = jarvis.openai.chat_requests()[-1].body["messages"]
    assert all("group question" not in str(m["content"]) for m in private_request)
    assert await Conversation.objects.filter(telegram_chat_id__in=[31, GROUP]).acount() == 2


async def test_allowlist_refuses_others_politely_without_spending(jarvis: Running):
    """With an allowlist, an allowed id and an allowed username are answered; others get one sentence, no call."""
    jarvis.bot.access_policy = AccessPolicy.ALLOWLIST
    jarvis.bot.allowed_users = "41, @Friendly"
    await jarvis.bot.asave()
    jarvis.telegram.push_text(TOKEN, 41, "by id")
    jarvis.telegram.push_text(TOKEN, 42, "by name", username="friendly")
    jarvis.telegram.push_text(TOKEN, 43, "stranger", username="stranger")
    [by_id] = await jarvis.answered(41)
    [by_name] = await jarvis.answered(42)
    [refused] = await jarvis.answered(43)
    assert (by_id.text, by_name.text) == ("Echo: by id", "Echo: by name")
    assert "not available to you" in refused.text
    assert len(jarvis.openai.chat_requests()) == 2
    assert not await Message.objects.filter(content="stranger").aexists()
    assert not await UsageRecord.objects.filter(user__telegram__telegram_id=43).aexists()


async def test_blocked_person_gets_one_sentence_and_no_model_call(jarvis: Running):
    """A person blocked in the admin gets one polite sentence and nothing is spent; /start too."""
    jarvis.telegram.push_text(TOKEN, 51, "/start")
    await jarvis.answered(51)
    await Profile.objects.filter(user__telegram__telegram_id=51).aupdate(is_blocked=True)
    jarvis.telegram.push_text(TOKEN, 51, "hello?", language_code="zh")
    refusal = (await jarvis.answered(51, 2))[-1]
    assert "抱歉" in refusal.text
    assert jarvis.openai.served == []


async def test_every_contact_records_the_person_and_their_membership(jarvis: Running):
    """The first message creates the person, their Telegram identity and their membership of the bot."""
    jarvis.telegram.push_text(TOKEN, 61, "/caps hi", username="newbie", first_name="New", language_code="zh-hans")
    await jarvis.answered(61)
    identity = await TelegramIdentity.objects.select_related("user").aget(telegram_id=61)
    assert (identity.username, identity.first_name, identity.language_code) == ("newbie", "New", "zh-hans")
    assert await BotUser.objects.filter(bot=jarvis.bot, identity=identity).aexists()


async def test_blocked_bot_is_remembered_for_broadcasts(jarvis: Running):
    """When Telegram says the person blocked the bot (403), their membership is marked so broadcasts skip them."""
    jarvis.telegram.fail_next("sendMessage", 403, times=1, chat_id=71)
    jarvis.telegram.push_text(TOKEN, 71, "/caps bye")
    await jarvis.telegram.await_for(lambda: jarvis.telegram.calls("sendMessage"))
    await jarvis.settled()
    membership = await BotUser.objects.aget(identity__telegram_id=71)
    assert membership.blocked_bot_at is not None
