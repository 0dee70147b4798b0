"""Device profiles: what a class of device is, as data with a source for every figure.

A profile says what the optimizer and the simulator need to know about a device class: CPU
architecture and features that matter for int8, cores, clock, RAM and storage budget, which
inference runtimes have wheels for it, default threads, and speed factors relative to the
reference machine (the two-core x86-64 this project is developed on, factor 1.0; a factor of
8 means "8 times slower"). Built-in profiles are YAML files in ``devices/profiles/``; users add
their own by passing a file path wherever a profile name is accepted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .speed_schema import SpeedModel

Runtime = Literal["onnxruntime", "litert"]
Arch = Literal["x86_64", "aarch64", "armv7l"]


class Figure(BaseModel):
    """A number and where it comes from."""

    model_config = ConfigDict(extra="forbid")

    value: float = Field(gt=0, description="The figure, in the unit its field names.")
    source: str = Field(min_length=3, description="Where the figure comes from (URL, doc, run).")


class SpeedFactors(BaseModel):
    """How many times slower than the reference machine (1.0), per kind of work."""

    model_config = ConfigDict(extra="forbid")

    fp32: Figure = Field(description="Float32 inference, times slower than the reference.")
    int8: Figure = Field(description="Int8 inference, times slower than the reference's int8.")
    python: Figure = Field(description="Python interpreter work (agent overhead), times slower.")


class DeviceProfile(BaseModel):
    """One device class."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Profile id, e.g. pi4.")
    title: str = Field(description="Human name, e.g. Raspberry Pi 4 Model B (4 GB).")
    arch: Arch = Field(description="CPU architecture as `uname -m` prints it.")
    cpu: str = Field(description="CPU model, e.g. Cortex-A72.")
    cores: Figure = Field(description="CPU cores.")
    clock_ghz: Figure = Field(description="CPU clock, GHz.")
    ram_mb: Figure = Field(description="RAM, MiB.")
    model_budget_mb: Figure = Field(
        description="RAM a model may use on this device, MiB (what is left for it, not all RAM)."
    )
    storage_budget_mb: Figure = Field(description="Storage a model may take, MiB.")
    int8_dot_product: bool = Field(
        description="Has an int8 dot-product instruction (Arm SDOT/UDOT, x86 VNNI): int8 pays off."
    )
    features: list[str] = Field(default_factory=list, description="CPU features that matter.")
    runtimes: list[Runtime] = Field(description="Inference runtimes with wheels for this device.")
    threads: int = Field(ge=1, description="Default inference threads.")
    speed: SpeedFactors = Field(description="Speed relative to the reference machine.")
    speed_model: SpeedModel | None = Field(
        default=None,
        description="Per-precision, per-operator-class rates with thread scaling, fitted to "
        "published or recorded figures (edgeagent.devices.speed); None: only the factors above.",
    )
    python: str = Field(
        default="3.11",
        pattern=r"^3\.[0-9]{1,2}$",
        description="Python of the device's usual OS, for its wheels (3.11: Debian 12 / Raspberry "
        "Pi OS Bookworm; 3.13: Debian 13 / Trixie).",
    )
    family: str | None = Field(
        default=None,
        description="Family name `edgeagent deploy --device` accepts for it (e.g. pi): the exact "
        "profile is then chosen from the device's hardware.",
    )
    match: list[str] = Field(
        default_factory=list,
        description="Substrings of /proc/device-tree/model that identify this board; empty for a "
        "generic profile (any board of its architecture).",
    )
    notes: str = Field(default="", description="Anything else worth knowing.")
    sources: dict[str, str] = Field(
        default_factory=dict,
        description="Where the facts that are not Figures come from, by field name "
        "(arch, cpu, int8_dot_product, features, runtimes, threads).",
    )

    @field_validator("model_budget_mb")
    @classmethod
    def _budget_fits_in_ram(cls, budget: Figure, info: ValidationInfo) -> Figure:
        ram = info.data.get("ram_mb")
        if isinstance(ram, Figure) and budget.value > ram.value:
            raise ValueError(f"{budget.value:g} MiB is more than the RAM ({ram.value:g} MiB)")
        return budget

    @field_validator("threads")
    @classmethod
    def _threads_fit_cores(cls, threads: int, info: ValidationInfo) -> int:
        cores = info.data.get("cores")
        if isinstance(cores, Figure) and threads > cores.value:
            raise ValueError(f"{threads} threads on {cores.value:g} cores oversubscribes the CPU")
        return threads

    @field_validator("sources")
    @classmethod
    def _sources_name_plain_fields(cls, sources: dict[str, str]) -> dict[str, str]:
        allowed = sorted(SOURCED_FIELDS)
        for key, text in sources.items():
            if key not in SOURCED_FIELDS:
                raise ValueError(f"{key!r} is not a field with a plain value; use one of {allowed}")
            if len(text.strip()) < 3:
                raise ValueError(f"source for {key!r} is empty")
        return sources


SOURCED_FIELDS = frozenset({"arch", "cpu", "int8_dot_product", "features", "runtimes", "threads"})
"""Fields whose value is not a :class:`Figure`, so their source lives in ``sources``."""
