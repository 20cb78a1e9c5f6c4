"""Every ``TUNEPLANE_*`` setting is in the README's table, with its real default."""

from __future__ import annotations

import re
from pathlib import Path

from tuneplane.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_has_a_readme_row():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(TUNEPLANE_[A-Z_]+)` \| ([^|]*) \|", README.read_text(), re.M)}
    missing = [f"TUNEPLANE_{name.upper()}" for name in Settings.model_fields if f"TUNEPLANE_{name.upper()}" not in rows]
    assert not missing, f"add these to the README's settings table: {missing}"
    assert "7071" in rows["TUNEPLANE_PORT"] and "536870912" in rows["TUNEPLANE_MAX_UPLOAD_BYTES"]
    assert Settings.model_fields["max_upload_bytes"].default == 536870912
    assert Settings.model_fields["port"].default == 7071


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNEPLANE_HOME", str(tmp_path))
    monkeypatch.setenv("TUNEPLANE_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("TUNEPLANE_CATALOG", " a-model , b-model ,")
    settings = Settings()
    assert settings.home == tmp_path and settings.max_upload_bytes == 1234
    assert settings.catalog_names == ["a-model", "b-model"]
    assert settings.database_path == tmp_path / "tuneplane.db"


def test_every_azure_setting_has_a_readme_row():
    from tuneplane.backends.azure_config import ENV_PREFIX, AzureSettings

    rows = set(re.findall(r"^\| `(TUNEPLANE_AZURE_[A-Z_]+)` \|", README.read_text(), re.M))
    missing = [f"{ENV_PREFIX}{name.upper()}" for name in AzureSettings.model_fields if f"{ENV_PREFIX}{name.upper()}" not in rows]
    assert not missing, f"add these to the README's Azure settings table: {missing}"
