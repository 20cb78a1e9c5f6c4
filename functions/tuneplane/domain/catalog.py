"""The base-model catalog: which open models jobs may fine-tune.

The catalog is configurable (``TUNEPLANE_CATALOG``). Models we know carry their Hugging Face source
and limits; any other configured name is accepted as-is, so a team can add a model without a code
change (the trainer resolves the name).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CatalogModel:
    id: str
    source: str  # where the trainer loads it from (HF repo id or a name the trainer builds)
    created: int = 1_700_000_000
    owned_by: str = "tuneplane"
    methods: tuple[str, ...] = ("supervised", "dpo")
    context_length: int = 2048
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)


KNOWN_MODELS: dict[str, CatalogModel] = {
    "SmolLM2-135M-Instruct": CatalogModel(
        id="SmolLM2-135M-Instruct",
        source="HuggingFaceTB/SmolLM2-135M-Instruct",
        created=1_730_419_200,
        owned_by="HuggingFaceTB",
        context_length=8192,
    ),
    "SmolLM2-360M-Instruct": CatalogModel(
        id="SmolLM2-360M-Instruct",
        source="HuggingFaceTB/SmolLM2-360M-Instruct",
        created=1_730_419_200,
        owned_by="HuggingFaceTB",
        context_length=8192,
    ),
    # A randomly initialised Llama with a few thousand parameters that the trainer builds itself:
    # it lets tests run real training steps on CPU in seconds, with no download.
    "tiny-random-llama": CatalogModel(
        id="tiny-random-llama",
        source="tiny-random-llama",
        created=1_735_689_600,
        owned_by="tuneplane",
        context_length=512,
        notes="test model built locally; its outputs are noise",
    ),
}


class Catalog:
    def __init__(self, names: list[str]):
        self._models = {name: KNOWN_MODELS.get(name) or CatalogModel(id=name, source=name) for name in names}

    def get(self, name: str) -> CatalogModel | None:
        return self._models.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def models(self) -> list[CatalogModel]:
        return list(self._models.values())
