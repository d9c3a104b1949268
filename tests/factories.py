"""factory-boy factories for test data."""

import factory
from django.contrib.auth import get_user_model

from botapp.models import Bot, Channel, Conversation, Persona


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"person{n}")
    password = factory.django.Password("correct horse battery staple")


class PersonaFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Persona

    name = factory.Sequence(lambda n: f"Persona {n}")
    system_prompt = "You are a test persona."
    model = "gpt-4o-mini"


class BotFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Bot

    name = factory.Sequence(lambda n: f"bot{n}")

    @factory.post_generation
    def token(self, create: bool, extracted: str | None, **kwargs: object) -> None:
        self.token = extracted or f"{100000 + self.pk or 1}:AAtest-token-for-tests-only-0000000"
        if create:
            self.save()


class ConversationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Conversation

    user = factory.SubFactory(UserFactory)
    channel = Channel.WEB
    persona = factory.LazyFunction(lambda: Persona.objects.get(name="Jarvis"))
