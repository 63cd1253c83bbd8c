"""The owner's adapters (`AOTI_ADAPTERS`, image and text models): listed beside the catalog's, a Hub adapter only at a pinned
commit, and a list that is wrong stops the start with what is wrong."""

from __future__ import annotations

import json

import pytest

from engines import registry

OUTLINE = registry.adapter("tiny-shapes-dit", "outline").source
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def owner_list(monkeypatch):
    def set_list(value) -> None:
        monkeypatch.setenv(registry.ENV_ADAPTERS, value if isinstance(value, str) else json.dumps(value))
        registry.owner_adapters.cache_clear()

    yield set_list
    monkeypatch.delenv(registry.ENV_ADAPTERS, raising=False)
    registry.owner_adapters.cache_clear()


def test_the_owners_adapters_are_offered_beside_the_catalogs(owner_list, tmp_path):
    entries = [{"id": "outline-2", "model": "tiny-shapes-dit", "source": OUTLINE, "description": "a copy"},
               {"id": "ghibli", "model": "flux.1-dev", "source": "someone/flux-ghibli", "weight_name": "lora.safetensors",
                "revision": COMMIT},
               {"id": "gone", "model": "tiny-shapes-dit", "source": str(tmp_path / "missing.safetensors")},
               {"id": "pirate", "model": "qwen2.5-7b-instruct", "source": "someone/qwen-pirate-lora", "revision": COMMIT}]
    path = tmp_path / "adapters.json"
    path.write_text(json.dumps(entries))
    for value in (entries, str(path)):  # the list itself, or a file holding it
        owner_list(value)
        assert [a.id for a in registry.adapters_for("tiny-shapes-dit")] == ["outline", "outline-2"]  # a missing file is not offered
        assert registry.adapter("flux.1-dev", "ghibli").revision == COMMIT
        assert registry.adapter("qwen2.5-7b-instruct", "pirate").weight_name is None  # a text adapter: a peft folder, the root
        assert [a.id for a in registry.adapters_for("tiny-llama-pydoc")] == ["shout"]
        with pytest.raises(ValueError, match=r"'gone' is not offered for tiny-shapes-dit \(offered: outline, outline-2\)"):
            registry.adapter("tiny-shapes-dit", "gone")


@pytest.mark.parametrize(("value", "message"), [
    ([{"id": "x", "model": "flux.1-dev", "source": "someone/lora", "weight_name": "a.safetensors", "revision": "main"}],
     r"AOTI_ADAPTERS\[0\]: a Hub adapter \(someone/lora\) needs a revision pinned to a commit"),
    ([{"id": "x", "model": "qwen2.5-7b-instruct", "source": "someone/lora"}], "needs a revision pinned to a commit"),
    ([{"id": "x", "model": "flux.1-dev", "source": "someone/lora", "revision": COMMIT}], "an image model .* needs its weight_name"),
    ([{"id": "x", "model": "no-such-model", "source": OUTLINE}], "'no-such-model' is not a model of the catalog"),
    ([{"id": "outline", "model": "tiny-shapes-dit", "source": OUTLINE}], "already has an adapter named 'outline'"),
    ([{"id": "x", "model": "tiny-shapes-dit"}], r"AOTI_ADAPTERS\[0\] must be an object with id, model and source"),
    ([{"id": "x", "model": "tiny-shapes-dit", "source": OUTLINE, "scale": "2"}], "must be an object"),
    ([{"id": 3, "model": "tiny-shapes-dit", "source": OUTLINE}], "every field is text"),
    ({"id": "x"}, "must be a JSON list"),
    ("[{", "is not valid JSON"),
    ("/no/such/file.json", "is neither a JSON list nor a readable file"),
])
def test_a_wrong_list_is_refused_with_what_is_wrong(owner_list, value, message):
    owner_list(value)
    with pytest.raises(ValueError, match=message):
        registry.owner_adapters()
