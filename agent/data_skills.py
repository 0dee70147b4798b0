"""The data loop on a device: model skills keep their hard cases; ``data.*`` skills serve them.

A skill set opts in with the :class:`KeepsHardCases` mixin and offers what it is unsure of::

    class DigitReader(KeepsHardCases, ModelSkillSet):
        @skill(side_effect="read")
        def read_digit(self, req: Image8x8) -> Digit:
            ...
            self.hard_cases.offer("read_digit", req, out, confidence=out.confidence)
            return out

``offer`` costs a dictionary lookup until the agent's config enables the skill (``data:``
section, :class:`~edgeagent.models.hardcases.DataConfig`); the policy decides what is kept
(:mod:`edgeagent.models.hardcases`) and the store keeps it bounded on disk
(:mod:`edgeagent.models.hardcase_store`, one folder per device under ``data.dir``).

An agent with a ``data`` section serves three more skills (:class:`DataSkills`): ``data.cases``
(read: a page of cases after a cursor, bounded in count and bytes), ``data.clear`` (actuate:
remove cases up to a cursor) and ``data.correct`` (actuate: a user's correction, kept with the
reason ``correction``). They are for operators (``edgeagent data pull``), not for plain language
or assistants: like ``system.*``, names starting with ``data.`` (``OPERATOR_PREFIXES`` in
:mod:`edgeagent.protocol`) are no MCP tools or Home Assistant entities, and a secured broker's ACL
opens them to operators only (docs/data-loop.md).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from .clock import SYSTEM_CLOCK, Clock
from .errors import BadRequest, ConfigError, NotFound
from .models.hardcase_store import HardCaseStore, StoreStatistics
from .models.hardcases import (
    DataConfig,
    HardCase,
    Reason,
    Redactor,
    SkillPolicy,
    decide,
    make_case,
    new_case_id,
)
from .protocol import DATA_PREFIX
from .skills import Skill, SkillSet, collect_skills, skill

if TYPE_CHECKING:
    from .config import AgentConfig

log = logging.getLogger(__name__)

DATA_SKILLS = ("data.cases", "data.clear", "data.correct")
PAGE_BYTES = 64 * 1024
"""Default JSON bytes of one ``data.cases`` page."""
PAGE_BYTES_MAX = 192 * 1024
"""Largest page asked for: below the 256 KiB payloads agents and clients expect."""


class CaseKeeper:
    """One per agent: the policies, the randomness of ``sampled`` and the store."""

    def __init__(
        self,
        device: str,
        config: DataConfig,
        folder: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        redact: Redactor | None = None,
    ) -> None:
        self.device = device
        self.config = config
        self.clock = clock
        """Public: the simulator hands in its virtual clock after the agent is built."""
        self.rng = rng or random.SystemRandom()
        self.redact = redact
        self.store = HardCaseStore(
            folder / device, max_cases=config.max_cases, max_bytes=config.max_bytes
        )

    def policy(self, skill_name: str) -> SkillPolicy | None:
        return self.config.skills.get(skill_name)

    def offer(
        self,
        skill_name: str,
        input: Any,
        output: Any,
        *,
        confidence: float | None = None,
        disagreement: bool = False,
        model: tuple[str, str] | None = None,
    ) -> str | None:
        """Keep this call if its skill's policy says so; the case id, or None."""
        policy = self.config.skills.get(skill_name)
        reason = decide(policy, confidence=confidence, disagreement=disagreement, rng=self.rng)
        if policy is None or reason is None:
            return None
        return self._keep(policy, reason, skill_name, input, output, confidence, model, None, None)

    def _keep(
        self,
        policy: SkillPolicy,
        reason: Reason,
        skill_name: str,
        input: Any,
        output: Any,
        confidence: float | None,
        model: tuple[str, str] | None,
        label: Any,
        of: str | None,
    ) -> str | None:
        case = make_case(
            policy=policy,
            reason=reason,
            case_id=new_case_id(self.device, self.rng),
            device=self.device,
            skill=skill_name,
            input=input,
            output=output,
            now=self.clock.time(),
            max_case_bytes=self.config.max_case_bytes,
            model=model,
            confidence=confidence,
            label=label,
            of=of,
            hook=self.redact,
        )
        if case is None:
            log.warning("%s: a %s case of %s is too large to keep", self.device, reason, skill_name)
            return None
        stored = self.store.append(case)
        return None if stored is None else stored.id

    def correct(self, req: Correction, model_of: Any = None) -> str | None:
        """Keep a user's correction: of a kept case (``req.case``) or of an input."""
        if req.case is not None:
            original = self.store.find(req.case)
            if original is None:
                raise NotFound(f"no hard case {req.case!r} on {self.device} (dropped or cleared?)")
            name, input, output = original.skill, original.input, original.output
            model = (
                (original.model, original.model_version or "")
                if original.model is not None
                else None
            )
            confidence = original.confidence
        else:
            if req.skill is None or req.input is None:
                raise BadRequest("give 'case' (a kept case's id) or 'skill' and 'input'")
            name, input, output, confidence = req.skill, req.input, req.output, None
            model = model_of(name) if model_of is not None else None
        policy = self.config.skills.get(name)
        if policy is None or "correction" not in policy.reasons:
            raise BadRequest(
                f"{self.device} keeps no corrections of {name!r} (data.skills.{name}.reasons)"
            )
        return self._keep(policy, "correction", name, input, output, confidence, model,
                          req.label, req.case)  # fmt: skip


class HardCases:
    """What a skill set calls: ``self.hard_cases.offer(skill, input, output, confidence=…)``.

    Disabled (keeps nothing) until the agent's ``data`` section enables the skill.
    """

    def __init__(self, keeper: CaseKeeper | None = None, owner: SkillSet | None = None) -> None:
        self.keeper = keeper
        self._owner = owner

    def enabled(self, skill_name: str) -> bool:
        return self.keeper is not None and self.keeper.policy(skill_name) is not None

    def model(self, skill_name: str) -> tuple[str, str] | None:
        return self._owner.model_info(skill_name) if self._owner is not None else None

    def offer(
        self,
        skill_name: str,
        input: Any,
        output: Any,
        *,
        confidence: float | None = None,
        disagreement: bool = False,
    ) -> str | None:
        """Offer a call's result; the id of the case kept, or None (the usual answer)."""
        keeper = self.keeper
        if keeper is None or keeper.policy(skill_name) is None:
            return None
        try:
            return keeper.offer(
                skill_name, input, output, confidence=confidence, disagreement=disagreement,
                model=self.model(skill_name),
            )  # fmt: skip
        except OSError as exc:  # a full or read-only disk never fails the call
            log.warning("%s: hard case of %s not kept: %s", keeper.device, skill_name, exc)
            return None


class KeepsHardCases:
    """Mixin for a :class:`SkillSet` whose skills keep hard cases (``self.hard_cases``)."""

    hard_cases: HardCases = HardCases()


# the data.* skills ----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CasesQuery(_Strict):
    after: int = Field(default=0, ge=0, description="Cursor: cases with a larger seq.")
    limit: int = Field(default=100, ge=1, le=1000, description="Cases per page at most.")
    max_bytes: int = Field(
        default=PAGE_BYTES, ge=1024, le=PAGE_BYTES_MAX, description="JSON bytes per page at most."
    )
    skill: str | None = Field(default=None, max_length=128, description="Only this skill's.")
    reason: Reason | None = Field(default=None, description="Only cases kept for this reason.")


class CasesPage(BaseModel):
    device: str
    cases: list[HardCase]
    cursor: int = Field(description="Pass as 'after' for the next page (and to data.clear).")
    more: bool = Field(description="Whether cases after the cursor remain.")
    stored: int = Field(description="Cases in the store now.")


class ClearRequest(_Strict):
    upto: int = Field(ge=0, description="Remove cases with seq <= upto (a page's cursor).")
    skill: str | None = Field(default=None, max_length=128, description="Only this skill's.")
    reason: Reason | None = Field(default=None, description="Only cases kept for this reason.")


class Cleared(BaseModel):
    cleared: int
    left: int


class Correction(_Strict):
    case: str | None = Field(
        default=None, max_length=200, description="Id of the kept case that was wrong."
    )
    skill: str | None = Field(default=None, max_length=128, description="Or: the skill called…")
    input: dict[str, Any] | None = Field(default=None, description="…and the input it got.")
    output: Any = Field(default=None, description="What the skill answered, when known.")
    label: Any = Field(description="The right answer: 7, or {intent, kind, room} for text.")


class Corrected(BaseModel):
    id: str | None = Field(description="The correction's case id (None: too large to keep).")


def _matcher(skill_name: str | None, reason: Reason | None) -> Any:
    if skill_name is None and reason is None:
        return None
    return lambda c: (
        (skill_name is None or c.skill == skill_name) and (reason is None or c.reason == reason)
    )


class DataSkills(SkillSet):
    """``data.cases``, ``data.clear``, ``data.correct`` over one :class:`CaseKeeper`."""

    def __init__(self, keeper: CaseKeeper, sets: Sequence[SkillSet] = ()) -> None:
        self.keeper = keeper
        self._sets = list(sets)

    def _model_of(self, skill_name: str) -> tuple[str, str] | None:
        for s in self._sets:
            info = s.model_info(skill_name)
            if info is not None:
                return info
        return None

    @skill(name="data.cases", side_effect="read", max_concurrency=1, max_queue=8,
           description="A page of the hard cases this device kept (for data pull).")  # fmt: skip
    def cases(self, req: CasesQuery) -> CasesPage:
        store = self.keeper.store
        page = store.page(req.after, limit=req.limit, max_bytes=req.max_bytes,
                          match=_matcher(req.skill, req.reason))  # fmt: skip
        return CasesPage(device=self.keeper.device, cases=page.cases, cursor=page.cursor,
                         more=page.more, stored=store.statistics().cases)  # fmt: skip

    @skill(name="data.clear", side_effect="actuate", idempotent=True, max_concurrency=1,
           max_queue=8, description="Remove the hard cases up to a cursor (a pull's).")  # fmt: skip
    def clear(self, req: ClearRequest) -> Cleared:
        store = self.keeper.store
        n = store.clear(req.upto, _matcher(req.skill, req.reason))
        return Cleared(cleared=n, left=store.statistics().cases)

    @skill(name="data.correct", side_effect="actuate", max_concurrency=1, max_queue=8,
           description="Record the right answer for a call (a kept case or an input).")  # fmt: skip
    def correct(self, req: Correction) -> Corrected:
        return Corrected(id=self.keeper.correct(req, self._model_of))

    def statistics(self) -> StoreStatistics:
        return self.keeper.store.statistics()


def attach_data(
    cfg: AgentConfig, skills: list[Skill], sets: list[SkillSet]
) -> tuple[list[Skill], list[SkillSet]]:
    """With ``cfg.data``: give every :class:`KeepsHardCases` set the agent's keeper and add the
    ``data.*`` skills. Names in ``data.skills`` must be skills of this agent (ConfigError)."""
    data = cfg.data
    if data is None:
        return skills, sets
    names = {s.name for s in skills}
    unknown = sorted(set(data.skills) - names)
    if unknown:
        raise ConfigError(
            f"data.skills names skills this agent does not have: {', '.join(unknown)} "
            f"(skills: {', '.join(sorted(names))})"
        )
    folder = data.dir
    if not folder.is_absolute():
        folder = (cfg.base_dir or Path.cwd()) / folder
    try:
        keeper = CaseKeeper(cfg.device, data, folder)
    except OSError as exc:
        raise ConfigError(f"data.dir: cannot keep hard cases in {folder}: {exc}") from exc
    keeping: set[str] = set()
    for s in sets:
        if isinstance(s, KeepsHardCases):
            s.hard_cases = HardCases(keeper, s)
            keeping |= {k.name for k in collect_skills(s)}
    for name in sorted(set(data.skills) - keeping):
        log.info("%s: %s offers no cases itself; only corrections are kept", cfg.device, name)
    system = DataSkills(keeper, sets)
    return [*skills, *collect_skills(system)], [*sets, system]


__all__ = [
    "DATA_PREFIX",
    "DATA_SKILLS",
    "CaseKeeper",
    "CasesPage",
    "CasesQuery",
    "ClearRequest",
    "Cleared",
    "Corrected",
    "Correction",
    "DataSkills",
    "HardCases",
    "KeepsHardCases",
    "attach_data",
]
