"""Client-side settings: where the API is and which credentials sign requests (KAOS_HOME/config.json).

The config holds the active target (`api_url`, `region`, `profile`, `credentials_file`) plus a remembered copy of
each target kaos knows (`targets["local"]`, `targets["cloud"]`), so `kaos config use local|cloud` switches between
the embedded stack and a deployed AWS stack without retyping anything."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

TARGETS = ("local", "cloud")
# The fields that make up a target: what `config use` swaps in and out.
TARGET_FIELDS = ("api_url", "region", "profile", "credentials_file", "workspace")


def home() -> Path:
    return Path(os.environ.get("KAOS_HOME") or Path.home() / ".kaos")


def config_path() -> Path:
    return home() / "config.json"


@dataclass
class ClientConfig:
    api_url: str = ""
    region: str = "us-east-1"
    profile: str = "default"
    credentials_file: str = ""
    workspace: str = ""
    target: str = "local"
    targets: dict[str, dict[str, str]] = field(default_factory=dict)
    # The state directory of the last `kaos local up --state-dir DIR`, so `local status` and `down` find it.
    state_dir: str = ""

    @classmethod
    def load(cls) -> ClientConfig:
        path = config_path()
        values = json.loads(path.read_text()) if path.exists() else {}
        config = cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})
        for variable, name in ENVIRONMENT_OVERRIDES.items():
            if os.environ.get(variable):
                setattr(config, name, os.environ[variable])
        return config

    def save(self) -> None:
        """Writes the config. A value the environment overrides (KAOS_PROFILE, KAOS_API_URL) keeps what the file
        had: `KAOS_PROFILE=other kaos workspace create x` must not make `other` the profile of later commands."""
        path = config_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = json.loads(path.read_text()) if path.exists() else {}
        values = asdict(self)
        for variable, name in ENVIRONMENT_OVERRIDES.items():
            if os.environ.get(variable) and values[name] == os.environ[variable] and name in stored:
                values[name] = stored[name]
        path.write_text(json.dumps(values, indent=2) + "\n")

    def active(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in TARGET_FIELDS}

    def switch(self, target: str, settings: dict[str, str] | None = None) -> None:
        """Remembers the active target's settings, then makes `target` active with `settings` (or what was
        remembered for it). The caller saves."""
        self.targets[self.target] = {**self.targets.get(self.target, {}), **self.active()}
        chosen = settings if settings is not None else self.targets.get(target)
        if chosen is None:
            raise KeyError(target)
        for name in TARGET_FIELDS:
            setattr(self, name, chosen.get(name, ""))
        self.targets[target] = {**chosen, **self.active()}
        self.target = target


ENVIRONMENT_OVERRIDES = {"KAOS_API_URL": "api_url", "KAOS_PROFILE": "profile"}
