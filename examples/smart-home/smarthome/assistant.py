"""A voice-assistant speaker that parses home commands with the zoo's tiny intent model."""

from __future__ import annotations

from pydantic import BaseModel, Field

from edgeagent import skill
from edgeagent.models.skillset import ModelSkillSet
from edgeagent.models.zoo import intent


class Utterance(BaseModel):
    text: str = Field(min_length=1, max_length=200, description="What was said.")


class ParsedCommand(BaseModel):
    intent: str = Field(description="turn_on, turn_off, set_level, query_state, … or unknown.")
    kind: str = Field(description="Device kind the command is about, or none.")
    room: str = Field(description="Room, or none.")
    number: float | None = Field(description="A level or temperature in the text, if any.")
    unit: str | None = Field(description="percent, degrees or None.")
    confidence: dict[str, float] = Field(description="Probability of each chosen label, per head.")


class CommandParser(ModelSkillSet):
    def __init__(
        self, model: str = "zoo:intent", profile: str | None = None, adapter: str | None = None
    ) -> None:
        super().__init__(model, profile, adapter)  # adapter: a household's LoRA adapter file

    @skill(side_effect="read", tags={"kind": "speaker"}, max_concurrency=1, max_queue=32)
    def parse_command(self, req: Utterance) -> ParsedCommand:
        """Parse a home command ("turn off the kitchen lights") into intent, kind and room."""
        c = intent.interpret(req.text, lambda feeds: self.session.run(dict(feeds.items())))
        return ParsedCommand(
            intent=c.intent,
            kind=c.kind,
            room=c.room,
            number=c.number,
            unit=c.unit,
            confidence={k: round(v, 4) for k, v in c.confidence.items()},
        )
