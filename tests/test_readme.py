"""Every ```console block of README.md is real output of the current code.

The test runs the blocks' commands in order, in a client home of its own, starting the embedded stack with the
README's own first command (`kaos local up --detach`) and stopping it with its last, and compares each output with
the README's. What may differ between runs is normalized: hex ids and hashes, numbers (times, ports, pids,
metrics), the length of table rules and runs of spaces. An id the README shows is mapped to the id of this run, so
a later command naming it (in full or by prefix) names the same job here. A command that succeeds is compared on
its stdout; a failing one on its stderr (progress lines go to stderr and are not shown in the README).

`python -m tests.test_readme --update` rewrites the README's outputs from a run (then review the diff)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from chalicelib.environments import lookup
from kaos.local.environments import Environments, default_cache_dir

from . import cli_process

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)
HEX = re.compile(r"[0-9a-f]{8,}")
SHORT_HEX = re.compile(r"(?<![0-9a-z])[0-9a-f]{4,7}(?![0-9a-z])")
COLUMNS = "120"


@dataclass
class Step:
    command: str
    expected: str


@dataclass
class Run:
    home: Path
    ids: dict[str, str] = field(default_factory=dict)  # README id -> this run's id

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        environment = {k: v for k, v in os.environ.items()
                       if not k.startswith(("AWS_", "KAOS_")) or k == "KAOS_LOCAL_REMOTE_DATA_BUCKETS"}
        return {**environment, "KAOS_HOME": str(self.home), "COLUMNS": COLUMNS, **extra}

    def translate(self, command: str) -> str:
        """The README's ids in a command replaced by this run's (full ids, and prefixes of known ids)."""
        command = HEX.sub(lambda m: self.ids.get(m[0], m[0]), command)

        def prefix(match: re.Match[str]) -> str:
            known = [(old, new) for old, new in self.ids.items() if old.startswith(match[0])]
            return known[0][1][:len(match[0])] if known else match[0]

        return SHORT_HEX.sub(prefix, command)

    def learn(self, expected: str, actual: str) -> None:
        for old, new in zip(HEX.findall(expected), HEX.findall(actual), strict=False):
            self.ids.setdefault(old, new)

    def execute(self, step: Step) -> tuple[str, str]:
        """The command as run (this run's ids) and what it showed."""
        command = self.translate(step.command)
        words = shlex.split(command.replace("\\\n", " "), comments=True)
        env = {}
        while words and re.match(r"^[A-Z_]+=", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        assert words[0] == "kaos", step.command
        done = cli_process.run(words[1:], self.env(env), 600, cwd=REPO)
        shown = done.stdout if done.returncode == 0 else done.stderr
        self.learn(step.expected, shown)
        return command, shown


def steps(text: str) -> list[Step]:
    """The commands of every console block with the output printed under each (`\\` continues a command)."""
    found: list[Step] = []
    for block in BLOCK.findall(text):
        command: list[str] | None = None
        output: list[str] = []
        continued = False
        for line in block.splitlines():
            if continued and command is not None:
                command.append(line)
                continued = line.rstrip().endswith("\\")
                continue
            if line.startswith("$ "):
                if command is not None:
                    found.append(Step("\n".join(command), "\n".join(output).strip("\n")))
                command, output = [line[2:]], []
                continued = line.rstrip().endswith("\\")
            else:
                output.append(line)
        if command is not None:
            found.append(Step("\n".join(command), "\n".join(output).strip("\n")))
    return found


def normalize(text: str) -> list[str]:
    # Any run of hex digits after an id's kind (its first piece, folded at a table's edge, may hold no digit) or holding
    # a digit: ids and hashes (also the pieces of one folded across table lines), numbers, times. Words are left alone.
    text = re.sub(r"\b(train|batch|grid)-[0-9a-f]+", r"\1-H", text)
    # The tail of an id folded onto the next line of a tree (`… /train-2fc87…a35` then `1/output/model.tar.gz`): a
    # line's first word before a `/`, which may hold no digit either.
    text = re.sub(r"(?m)^([ \t│]*)[0-9a-f]+(?=/)", r"\1H", text)
    text = re.sub(r"[0-9a-f]*[0-9][0-9a-f]*", "H", text)
    text = re.sub(r"[─━═]+", "─", text)
    text = re.sub(r"[ \t]+", " ", text)
    return [line.strip() for line in text.splitlines() if line.strip()]


def run_readme(home: Path) -> list[tuple[Step, str, str]]:
    """Each step with the command as run and its output."""
    run = Run(home)
    results: list[tuple[Step, str, str]] = []
    try:
        for step in steps(README.read_text()):
            results.append((step, *run.execute(step)))
    finally:  # whatever failed, no stack is left running
        subprocess.run([sys.executable, "-m", "kaos.cli", "local", "down"], cwd=REPO, env=run.env({}),
                       capture_output=True, timeout=120, check=False)
    return results


def test_readme_console_blocks_are_real_output(tmp_path: Path) -> None:
    # The README shows a machine where the default image's environment is built (`make demo` builds it): built here
    # first, so its job's log does not begin with the one-time build when this test is the session's first to run
    # that image (a fresh checkout's cache is empty).
    Environments(default_cache_dir()).ensure(lookup("sklearn").image_uri("us-east-1"))
    results = run_readme(tmp_path / "home")
    assert len(results) >= 8
    mismatches = [f"$ {step.command}\n--- README\n{step.expected}\n--- actual\n{actual}"
                  for step, _, actual in results if normalize(step.expected) != normalize(actual)]
    assert not mismatches, "\n\n".join(mismatches)


def test_normalize_ignores_only_what_varies() -> None:
    assert normalize("job train-268101004bb6943c0516455f at 2026-11-26T15:30:48.382+00:00  ok") == \
        normalize("job train-c43f4a70a7e82476b4fcf529 at 2027-01-01T00:00:00.000+00:00 ok")
    assert normalize("status COMPLETED") != normalize("status FAILED")
    assert normalize("│ s3://b/train-f01 │\n│ 938339a8933f63dba036c/x │") == \
        normalize("│ s3://b/train-c43 │\n│ f4a70a7e82476b4fcf529/x │") == \
        normalize("│ s3://b/train-beb │\n│ 471c944378f6b6bbce815/x │")  # a first piece without a digit
    assert normalize("    s3://b/train-2fc8a35\n    1/output/model.tar.gz") == \
        normalize("    s3://b/train-8918cab\n    a/output/model.tar.gz")  # a folded tail without a digit
    assert [s.command for s in steps("```console\n$ kaos a \\\n  b\nout\n$ kaos c\n```")] == ["kaos a \\\n  b",
                                                                                              "kaos c"]


def update() -> None:
    """Rewrites each console block's outputs with this run's (ids as they came out)."""
    with tempfile.TemporaryDirectory(prefix="kaos-readme-") as home:
        results = iter(run_readme(Path(home) / "home"))
    text = README.read_text()

    def block(match: re.Match[str]) -> str:
        lines: list[str] = []
        for _ in steps(f"```console\n{match[1]}```"):
            _, command, actual = next(results)
            lines += [f"$ {command}", *[line.rstrip() for line in actual.rstrip("\n").splitlines()], ""]
        return "```console\n" + "\n".join(lines).rstrip("\n") + "\n```"

    README.write_text(BLOCK.sub(block, text))


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit("usage: python -m tests.test_readme --update")
    update()
