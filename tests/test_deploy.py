"""The files that run batch-ingest on real engines (deploy/, Dockerfile, .dockerignore), checked offline.

* Every Kubernetes manifest validates against the strict schema of its kind (vendored in
  tests/schemas/kubernetes: an unknown or misspelt field fails).
* Every command line an engine runs (container args, AWS Batch commands, the GNU parallel line and the
  commands in the READMEs' sh blocks) is parsed by the real click command: the subcommand exists, every
  option is one of its options, and the values parse. Every SMARTSTREAM_* name is a real setting's
  variable, and each engine's workers cover the shards 0..N-1 once each through `parse_shard` with
  the variable the engine sets.
* The AWS Batch JSON validates against botocore's model of RegisterJobDefinition and SubmitJob.
* Exit 2 (`EXIT_USAGE`) fails the Kubernetes Job and is not retried by AWS Batch; exit 75
  (`EXIT_TRY_AGAIN`: the run folder is in use by another process) is retried by both, and so is a
  `--no-wait` shard's exit 1 (rows left unsent: the shard resumes), while the collector's exit 1 (its
  work is done: some rows did not succeed) is not.
* The Dockerfile installs from the lock and its entry point is the project's console script.

Each checker also has a test that it catches a deliberate mistake.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pytest
import yaml  # type: ignore[import-untyped]
from batch_ingest.cli import main
from batch_ingest.errors import (
    EXIT_ABORTED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_ROWS_FAILED,
    EXIT_TRY_AGAIN,
    EXIT_USAGE,
    UsageError,
)
from batch_ingest.settings import SETTINGS
from batch_ingest.shard import ENGINES, parse_shard
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
AWS = DEPLOY / "aws-batch"
PARALLEL = DEPLOY / "gnu-parallel"
SCHEMA_DIRS = sorted((Path(__file__).parent / "schemas" / "kubernetes").glob("v*-local-strict"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))

SETTING_VARS = frozenset(s.env for s in SETTINGS)
SECRET_VARS = frozenset(s.env for s in SETTINGS if s.secret)
ENGINE_VARS = {name: offset for name, _, offset in ENGINES}
K8S_INDEX, AWS_INDEX, PARALLEL_SEQ = "JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX", "PARALLEL_SEQ"
IMAGE = "batch-ingest"  # the image's name (any registry, any tag)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- Kubernetes ----------------------------------------------------------------------------------


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every YAML document under deploy/kubernetes, with a name for messages."""
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                docs.append((f"{rel(path)}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return docs


DOCS = k8s_documents()


def docs_of(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in DOCS if doc.get("kind") == kind]


def job_named(name: str) -> dict[str, Any]:
    (job,) = [doc for doc in docs_of("Job") if doc["metadata"]["name"] == name]
    return job


@functools.cache
def k8s_validator(kind: str, api_version: str) -> Any:
    """A validator for the vendored strict schema of `kind` in `api_version`, made self-contained: the
    definitions it refers to (in _definitions.json) put under its own `$defs`."""
    assert len(SCHEMA_DIRS) == 1, f"one vendored schema version expected, found {SCHEMA_DIRS}"
    folder = SCHEMA_DIRS[0]
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)  # apps/v1 -> apps-v1
    path = folder / f"{kind.lower()}-{group_version}.json"
    assert path.is_file(), (
        f"no vendored schema {path.name} for {kind} {api_version}: see {folder.parent}/README.md"
    )
    text = path.read_text(encoding="utf-8").replace('"/api/_definitions.json#/$defs/', '"#/$defs/')
    schema = json.loads(text)
    schema["$defs"] = json.loads((folder / "_definitions.json").read_text(encoding="utf-8"))["$defs"]
    return Draft202012Validator(schema)


def schema_errors(doc: Mapping[str, Any]) -> list[str]:
    validator = k8s_validator(str(doc["kind"]), str(doc["apiVersion"]))
    return [
        f"{'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(doc)
    ]


@pytest.mark.parametrize("name, doc", DOCS, ids=[name for name, _ in DOCS])
def test_kubernetes_manifest_validates_against_strict_schema(name: str, doc: dict[str, Any]) -> None:
    assert schema_errors(doc) == [], name


def test_kubernetes_schema_check_catches_unknown_and_mistyped_fields() -> None:
    job = copy.deepcopy(job_named("batch-ingest-shards"))
    job["spec"]["backofLimitPerIndex"] = 3  # misspelt
    job["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["secretRef"]["nmae"] = "x"
    job["spec"]["parallelism"] = "4"  # a string
    errors = " ".join(schema_errors(job))
    assert "backofLimitPerIndex" in errors
    assert "nmae" in errors
    assert "'4' is not of type" in errors


def test_kubernetes_manifests_are_the_expected_set() -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in DOCS)
    assert kinds == [
        ("Deployment", "redis"),
        ("Job", "batch-ingest-collect"),
        ("Job", "batch-ingest-shards"),
        ("PersistentVolumeClaim", "batch-ingest-runs"),
        ("Pod", "batch-ingest-loader"),
        ("Secret", "batch-ingest-credentials"),
        ("Service", "redis"),
    ]


def pod_spec(doc: Mapping[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return dict(doc["spec"])
    if doc["kind"] in ("Job", "Deployment"):
        return dict(doc["spec"]["template"]["spec"])
    return None


def is_our_image(image: str) -> bool:
    return image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0] == IMAGE


def our_containers(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [c for c in (spec or {}).get("containers", []) if is_our_image(c["image"])]


def test_kubernetes_references_resolve_and_secret_holds_placeholders_only() -> None:
    (secret,) = docs_of("Secret")
    (pvc,) = docs_of("PersistentVolumeClaim")
    assert "data" not in secret, "the example Secret uses stringData, with placeholders"
    assert set(secret["stringData"].values()) == {"replace-me"}, "never a real credential in the repository"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "shards on several nodes share the run root"
    for _, doc in DOCS:
        spec = pod_spec(doc)
        if spec is None or not our_containers(doc):
            continue
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert set(claims.values()) == {pvc["metadata"]["name"]}
        for container in our_containers(doc):
            refs = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
            assert refs == {secret["metadata"]["name"]}
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert claims.get(mounts.get("/runs", "")), "the run root volume is mounted at /runs"


# -- command lines ---------------------------------------------------------------------------------


@dataclass
class Invocation:
    """One `batch-ingest ...` an engine runs: argv after the program name, the environment the engine
    gives it (the shard index), and the group of workers it belongs to (one Job, array, parallel call)."""

    where: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    group: str = ""

    def option(self, name: str) -> str | None:
        for i, token in enumerate(self.argv):
            if token == name and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
        return None


def k8s_invocations() -> list[Invocation]:
    found = []
    for name, doc in DOCS:
        for container in our_containers(doc):
            if "command" in container:
                # The entry point replaced (the loader pod waits): it must not be batch-ingest itself,
                # or its `args` would not be what runs.
                assert Path(container["command"][0]).name != "batch-ingest", f"{name}: use args, not command"
                continue
            argv = [str(a) for a in container["args"]]
            spec = doc.get("spec", {})
            if doc["kind"] == "Job" and spec.get("completionMode") == "Indexed":
                for i in range(spec["completions"]):
                    found.append(Invocation(f"{name}[{i}]", argv, {K8S_INDEX: str(i)}, name))
            else:
                found.append(Invocation(name, argv, {}, name))
    return found


def aws_json(name: str) -> dict[str, Any]:
    return dict(json.loads((AWS / name).read_text(encoding="utf-8")))


def aws_invocations() -> list[Invocation]:
    definition = aws_json("job-definition.json")
    shards, collector = aws_json("submit-shards.json"), aws_json("submit-collector.json")
    assert shards["jobDefinition"] == collector["jobDefinition"] == definition["jobDefinitionName"]
    command = definition["containerProperties"]["command"]
    size = shards["arrayProperties"]["size"]
    where = rel(AWS / "job-definition.json")
    found = [Invocation(f"{where}[{i}]", command, {AWS_INDEX: str(i)}, where) for i in range(size)]
    found.append(Invocation(rel(AWS / "submit-collector.json"), collector["containerOverrides"]["command"]))
    return found


OPERATORS = frozenset({"|", "||", "&&", ";", "&", "(", ")", ";;"})


def shell_words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def logical_lines(text: str) -> Iterator[str]:
    """Shell lines with backslash continuations joined and quotes spanning lines kept together."""
    buffer = ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        buffer += line
        try:
            shell_words(buffer)
        except ValueError:  # a quote still open: the next line continues it
            buffer += "\n"
            continue
        yield buffer
        buffer = ""
    assert not buffer.strip(), f"unterminated shell text: {buffer!r}"


def sh_blocks(markdown: str) -> Iterator[str]:
    for match in re.finditer(r"^```(?:sh|bash|shell)\n(.*?)^```", markdown, re.M | re.S):
        yield match.group(1)


def parallel_invocations(words: list[str], where: str) -> list[Invocation]:
    """Each job of a `parallel ... 'COMMAND' ::: INPUTS` line, as GNU parallel would start it: `{}`
    replaced by the input (without `{}`, -N0 must keep the input off the command line), and
    PARALLEL_SEQ the job's sequence number (1-based)."""
    sep = words.index(":::")
    inputs = []
    for word in words[sep + 1 :]:
        if word in OPERATORS:
            break
        inputs.append(word)
    (command,) = [w for w in words[1:sep] if "batch-ingest " in w]
    group = f"{where}:{shlex.join(words)}"
    if "{}" not in command:
        assert "-N0" in words[1:sep], (
            f"{where}: without {{}} parallel appends each input to the command: use -N0"
        )
    found = []
    for seq, value in enumerate(inputs, start=1):
        for inv in line_invocations(command.replace("{}", value), where):
            found.append(Invocation(f"{where}[{value}]", inv.argv, {PARALLEL_SEQ: str(seq)}, group))
    return found


def line_invocations(line: str, where: str) -> list[Invocation]:
    words = shell_words(line)
    if not words:
        return []
    if words[0] == "parallel":
        return parallel_invocations(words, where)
    found = []
    for i, word in enumerate(words):
        if word == "batch-ingest" and (i == 0 or words[i - 1] in {*OPERATORS, "--", "exec"}):
            argv = []
            for token in words[i + 1 :]:
                if token in OPERATORS:
                    break
                argv.append(token)
            found.append(Invocation(where, argv, {}, f"{where}:{line[:40]}"))
    return found


def shell_invocations() -> list[Invocation]:
    found = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix == ".sh":
            texts = [path.read_text(encoding="utf-8")]
        elif path.suffix == ".md":
            texts = list(sh_blocks(path.read_text(encoding="utf-8")))
        else:
            continue
        for text in texts:
            for line in logical_lines(text):
                found.extend(line_invocations(line, rel(path)))
    return found


INVOCATIONS = [*k8s_invocations(), *aws_invocations(), *shell_invocations()]


def cli_problems(argv: Sequence[str]) -> list[str]:
    """What is wrong with `batch-ingest ARGV` for the real CLI: an unknown subcommand or option, a
    missing or extra argument, a value the option refuses. A path that does not exist on this machine
    is not a problem (the engines' paths are theirs)."""
    if not argv:
        return ["no subcommand"]
    ctx = click.Context(main, info_name="batch-ingest")
    command = main.get_command(ctx, argv[0])
    if command is None:
        return [f"no command {argv[0]!r}; batch-ingest has: {', '.join(main.list_commands(ctx))}"]
    known = {
        name for p in command.params if isinstance(p, click.Option) for name in (*p.opts, *p.secondary_opts)
    }
    problems = []
    for token in argv[1:]:
        if token == "--":
            break
        if token.startswith("-") and len(token) > 1 and token.split("=", 1)[0] not in known:
            problems.append(f"batch-ingest {argv[0]} has no option {token.split('=', 1)[0]}")
    if problems:
        return problems
    try:
        with command.make_context(argv[0], list(argv[1:]), parent=ctx):
            pass
    except click.BadParameter as exc:
        missing = isinstance(exc, click.MissingParameter)
        if missing or not (exc.param is not None and isinstance(exc.param.type, click.Path)):
            problems.append(f"batch-ingest {shlex.join(argv)}: {exc.format_message()}")
    except click.UsageError as exc:
        problems.append(f"batch-ingest {shlex.join(argv)}: {exc.format_message()}")
    return problems


def test_every_engine_has_its_commands() -> None:
    subcommands = {(inv.where.split("[")[0].split(":")[0], inv.argv[0]) for inv in INVOCATIONS if inv.argv}
    for where in (
        "deploy/kubernetes/ingest-job.yaml",
        "deploy/aws-batch/job-definition.json",
        "deploy/gnu-parallel/run-shards.sh",
    ):
        assert (where, "run") in subcommands
    for where in (
        "deploy/kubernetes/collector-job.yaml",
        "deploy/aws-batch/submit-collector.json",
        "deploy/gnu-parallel/run-shards.sh",
    ):
        assert (where, "collect") in subcommands


@pytest.mark.parametrize(
    "inv", INVOCATIONS, ids=[f"{inv.where} {shlex.join(inv.argv)[:60]}" for inv in INVOCATIONS]
)
def test_command_fits_the_cli(inv: Invocation) -> None:
    assert cli_problems(inv.argv) == [], inv.where


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["runn", "m.csv"], "no command 'runn'"),
        (["batch-ingest", "run", "m.csv"], "no command 'batch-ingest'"),  # the entry point is batch-ingest
        (["run", "m.csv", "--shards", "auto/8"], "no option --shards"),
        (["run", "m.csv", "--report-dir=/x", "--no-such-flag"], "no option --no-such-flag"),
        (["run", "m.csv", "--shard"], "requires an argument"),
        (["run"], "Missing argument"),
        (["run", "m.csv", "1"], "unexpected extra argument"),  # parallel appending its input
        (["run", "m.csv", "--format", "xlsx"], "xlsx"),
    ],
)
def test_cli_check_catches_mistakes(argv: list[str], expected: str) -> None:
    problems = cli_problems(argv)
    assert problems and expected in " ".join(problems)


def test_cli_check_accepts_a_good_command() -> None:
    assert (
        cli_problems(["run", "/nowhere/m.csv", "--shard", "auto/8", "--report-dir", "/nowhere/r", "-q"]) == []
    )


def test_shard_workers_cover_every_shard_once_through_the_engines_variable() -> None:
    groups: dict[str, list[Invocation]] = {}
    for inv in INVOCATIONS:
        if inv.argv[:1] == ["run"] and inv.option("--shard") is not None:
            groups.setdefault(inv.group, []).append(inv)
    assert len(groups) >= 4, groups.keys()  # Kubernetes, AWS Batch, run-shards.sh, the README's auto/8 line
    for group, invocations in groups.items():
        for inv in invocations:
            assert set(inv.env) <= set(ENGINE_VARS), f"{inv.where}: {inv.env} is not read by --shard auto"
        shards = [parse_shard(str(inv.option("--shard")), env=inv.env) for inv in invocations]
        count = shards[0].count
        assert sorted(s.index for s in shards) == list(range(count)), (
            f"{group}: shards 0..{count - 1} once each"
        )
        assert {s.count for s in shards} == {count}
        assert len({inv.option("--report-dir") for inv in invocations}) == 1
        assert len({inv.argv[1] for inv in invocations}) == 1, "one manifest"


def test_shards_submit_and_leave_the_jobs_to_the_collector() -> None:
    """Every shard runs --no-wait (its exit 0 means every row was submitted or has ended), and none
    --skip-existing: it would turn off the adoption a shard with no folder gets (a lost disk)."""
    shards = [inv for inv in INVOCATIONS if inv.argv[:1] == ["run"] and inv.option("--shard") is not None]
    assert shards
    for inv in shards:
        assert "--no-wait" in inv.argv, inv.where
        assert not any(a.split("=", 1)[0] == "--skip-existing" for a in inv.argv), inv.where


def test_engine_variables_are_those_shard_reads() -> None:
    assert {K8S_INDEX, AWS_INDEX, PARALLEL_SEQ} <= set(ENGINE_VARS)
    assert ENGINE_VARS[PARALLEL_SEQ] == -1  # 1-based, as GNU parallel counts
    indexed = job_named("batch-ingest-shards")["spec"]
    assert indexed["completionMode"] == "Indexed"
    assert indexed["completions"] == parse_shard("auto/8", env={K8S_INDEX: "0"}).count
    assert aws_json("submit-shards.json")["arrayProperties"]["size"] == 8


def test_shard_coverage_check_catches_a_wrong_count() -> None:
    wrong = [parse_shard("auto/8", env={K8S_INDEX: str(i)}).index for i in range(4)]  # completions 4 for N 8
    assert sorted(wrong) != list(range(8))
    with pytest.raises(UsageError, match="none of"):  # a variable --shard auto does not read
        parse_shard("auto/8", env={"PARALLEL_JOBSLOT": "1"})


def test_parallel_line_check_catches_mistakes() -> None:
    def indexes(line: str) -> list[int]:
        return sorted(
            parse_shard(str(i.option("--shard")), env=i.env).index for i in line_invocations(line, "x")
        )

    assert indexes("parallel 'batch-ingest run m.csv --shard {}/4' ::: 0 1 2 3") == [0, 1, 2, 3]
    assert indexes("parallel -N0 'batch-ingest run m.csv --shard auto/4' ::: a b c d") == [0, 1, 2, 3]
    assert indexes("parallel 'batch-ingest run m.csv --shard {}/4' ::: 0 1 2 2") != [0, 1, 2, 3]
    with pytest.raises(UsageError, match=r"not in 0\.\.1"):  # inputs counted from 1: --shard wants 0-based
        indexes("parallel 'batch-ingest run m.csv --shard {}/2' ::: 1 2")
    with pytest.raises(AssertionError, match="-N0"):  # each input would become a second MANIFEST
        indexes("parallel 'batch-ingest run m.csv --shard auto/2' ::: 1 2")


def test_collectors_collect_the_shards_root() -> None:
    for folder in (K8S, AWS, PARALLEL):
        invocations = [inv for inv in INVOCATIONS if inv.where.startswith(rel(folder))]
        roots = {
            inv.option("--report-dir")
            for inv in invocations
            if inv.argv[:1] == ["run"] and inv.option("--shard")
        }
        collected = {arg for inv in invocations if inv.argv[:1] == ["collect"] for arg in inv.argv[1:]}
        assert len(roots) == 1 and roots <= collected, (folder, roots, collected)


# -- environment variables ------------------------------------------------------------------------


def smartstream_names(text: str) -> set[str]:
    return set(re.findall(r"\bSMARTSTREAM_[A-Z][A-Z0-9_]*", text))


def test_every_smartstream_name_in_deploy_is_a_setting() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()] + [ROOT / "Dockerfile"]
    used = {name: rel(p) for p in files for name in smartstream_names(p.read_text(encoding="utf-8"))}
    assert {"SMARTSTREAM_MERCHANT_ID", "SMARTSTREAM_API_KEY", "SMARTSTREAM_RATE"} <= set(used)
    unknown = {name: where for name, where in used.items() if name not in SETTING_VARS}
    assert unknown == {}, f"not a setting's variable (batch-ingest config lists them): {unknown}"


def test_smartstream_name_check_catches_a_wrong_name() -> None:
    assert smartstream_names("env: SMARTSTREAM_APIKEY=x and SMARTSTREAM_RATE") - SETTING_VARS == {
        "SMARTSTREAM_APIKEY"
    }


def test_secrets_come_from_secret_stores_and_plain_env_holds_settings_only() -> None:
    (secret,) = docs_of("Secret")
    assert set(secret["stringData"]) <= SETTING_VARS
    for _, doc in DOCS:
        for container in our_containers(doc):
            plain = {e["name"] for e in container.get("env", [])}
            assert plain <= SETTING_VARS and not plain & SECRET_VARS, plain
    props = aws_json("job-definition.json")["containerProperties"]
    plain = {e["name"] for e in props["environment"]}
    from_store = {s["name"] for s in props["secrets"]}
    assert plain <= SETTING_VARS and not plain & SECRET_VARS
    assert from_store <= SETTING_VARS and {"SMARTSTREAM_MERCHANT_ID", "SMARTSTREAM_API_KEY"} <= from_store
    assert all(s["valueFrom"].startswith("arn:aws:secretsmanager:") for s in props["secrets"])


# -- retries and exit codes -----------------------------------------------------------------------


def k8s_action(
    policy: Mapping[str, Any], container: str, exit_code: int | None, conditions: Sequence[str] = ()
) -> str:
    """What Kubernetes does with a failed pod under `podFailurePolicy`: the first rule that matches
    decides; none matching counts the failure against the backoff limit."""
    for rule in policy.get("rules", []):
        codes = rule.get("onExitCodes")
        if (
            codes is not None
            and exit_code is not None
            and codes.get("containerName") in (None, container)
            and (exit_code in codes["values"]) == (codes["operator"] == "In")
        ):
            return str(rule["action"])
        for pattern in rule.get("onPodConditions", []):
            if pattern["type"] in conditions and pattern.get("status", "True") == "True":
                return str(rule["action"])
    return "Count"


RETRIED = frozenset({"Count", "Ignore"})  # what a podFailurePolicy does to retry a failed pod


@pytest.mark.parametrize("name", ["batch-ingest-shards", "batch-ingest-collect"])
def test_kubernetes_job_fails_at_once_on_usage_errors_and_retries_the_rest(name: str) -> None:
    job = job_named(name)
    spec = job["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    policy = spec["podFailurePolicy"]
    assert pod["restartPolicy"] == "Never", "podFailurePolicy requires restartPolicy Never"
    assert spec["podReplacementPolicy"] == "Failed", (
        "no replacement while the old pod still holds the run lock"
    )
    assert k8s_action(policy, container["name"], EXIT_USAGE) == "FailJob"
    assert k8s_action(policy, container["name"], None, ["DisruptionTarget"]) == "Ignore"
    # The folder in use by another process: the same command succeeds once it ends.
    assert k8s_action(policy, container["name"], EXIT_TRY_AGAIN) in RETRIED
    for code in (EXIT_ABORTED, EXIT_INTERNAL, EXIT_INTERRUPTED):
        assert k8s_action(policy, container["name"], code) == "Count", code
    if spec.get("completionMode") == "Indexed":
        # A --no-wait shard exits 1 only when it left rows unsent: retried, it resumes and sends them.
        assert "--no-wait" in container["args"]
        assert k8s_action(policy, container["name"], EXIT_ROWS_FAILED) in RETRIED
        assert spec["backoffLimitPerIndex"] >= 1
        assert spec["maxFailedIndexes"] <= spec["completions"]
    else:
        # The collector's 1: every job has ended and some rows did not succeed; its work is done.
        assert container["args"][0] == "collect"
        assert k8s_action(policy, container["name"], EXIT_ROWS_FAILED) == "FailJob"
        assert spec["backoffLimit"] >= 1


def test_pod_failure_policy_check_catches_a_wrong_rule() -> None:
    job = job_named("batch-ingest-shards")
    policy = copy.deepcopy(job["spec"]["podFailurePolicy"])
    policy["rules"][0]["onExitCodes"]["values"] = [EXIT_ABORTED]
    assert k8s_action(policy, "batch-ingest", EXIT_USAGE) != "FailJob"
    policy = copy.deepcopy(job["spec"]["podFailurePolicy"])
    policy["rules"][0]["onExitCodes"]["containerName"] = "sidecar"
    assert k8s_action(policy, "batch-ingest", EXIT_USAGE) != "FailJob"
    # The old rules: exit 1 a failed index, and 75 caught by a FailJob rule on usage errors.
    policy = copy.deepcopy(job["spec"]["podFailurePolicy"])
    policy["rules"].insert(0, {"action": "FailIndex", "onExitCodes": {"operator": "In", "values": [1]}})
    policy["rules"].insert(0, {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [2, 75]}})
    assert k8s_action(policy, "batch-ingest", EXIT_ROWS_FAILED) not in RETRIED
    assert k8s_action(policy, "batch-ingest", EXIT_TRY_AGAIN) not in RETRIED


def aws_action(strategy: Mapping[str, Any], exit_code: int) -> str:
    """What AWS Batch does when a container exits with `exit_code`: the first `evaluateOnExit` entry
    whose conditions all match (reasons are unknown here: only `*` matches them); none: RETRY."""
    for rule in strategy.get("evaluateOnExit", []):
        checks = [fnmatch.fnmatchcase(str(exit_code), rule["onExitCode"])] if "onExitCode" in rule else []
        checks += [rule[key] == "*" for key in ("onReason", "onStatusReason") if key in rule]
        if checks and all(checks):
            return str(rule["action"]).upper()
    return "RETRY"


def explicitly_retried(strategy: Mapping[str, Any], exit_code: int) -> bool:
    """An `evaluateOnExit` entry names `exit_code` and retries it (not only the default for no match)."""
    return any(
        rule.get("onExitCode") == str(exit_code) and str(rule["action"]).upper() == "RETRY"
        for rule in strategy.get("evaluateOnExit", [])
    )


def test_aws_batch_shards_retry_all_but_usage_errors() -> None:
    definition = aws_json("job-definition.json")
    assert "--no-wait" in definition["containerProperties"]["command"]
    strategy = definition["retryStrategy"]
    assert strategy["attempts"] >= 2
    assert aws_action(strategy, EXIT_USAGE) == "EXIT"
    assert aws_action(strategy, EXIT_TRY_AGAIN) == "RETRY" and explicitly_retried(strategy, EXIT_TRY_AGAIN)
    # A --no-wait shard exits 1 only when it left rows unsent: retried, it resumes and sends them.
    assert aws_action(strategy, EXIT_ROWS_FAILED) == "RETRY"
    for code in (EXIT_ABORTED, EXIT_INTERNAL, EXIT_INTERRUPTED):
        assert aws_action(strategy, code) == "RETRY", code
    bad = {"evaluateOnExit": [{"onExitCode": "*", "action": "RETRY"}, *strategy["evaluateOnExit"]]}
    assert aws_action(bad, EXIT_USAGE) == "RETRY"  # the check sees a catch-all placed first
    bad = {"evaluateOnExit": [{"onExitCode": "7*", "action": "EXIT"}, *strategy["evaluateOnExit"]]}
    assert aws_action(bad, EXIT_TRY_AGAIN) == "EXIT"  # and a pattern that swallows 75


def test_aws_batch_collector_keeps_its_verdict_and_retries_the_rest() -> None:
    collector = aws_json("submit-collector.json")
    assert collector["containerOverrides"]["command"][0] == "collect"
    # SubmitJob's retryStrategy replaces the job definition's (which is the shards').
    strategy = collector["retryStrategy"]
    assert strategy["attempts"] >= 2
    assert aws_action(strategy, EXIT_USAGE) == "EXIT"
    assert aws_action(strategy, EXIT_ROWS_FAILED) == "EXIT"  # every job ended; the report says which rows
    assert aws_action(strategy, EXIT_TRY_AGAIN) == "RETRY" and explicitly_retried(strategy, EXIT_TRY_AGAIN)
    for code in (EXIT_ABORTED, EXIT_INTERNAL, EXIT_INTERRUPTED):
        assert aws_action(strategy, code) == "RETRY", code


# -- AWS Batch against botocore's model of the API -------------------------------------------------


@functools.cache
def batch_service_model() -> Any:
    """botocore's model of the AWS Batch API (botocore/data/batch/*/service-2.json, shipped with botocore)."""
    loaders = pytest.importorskip("botocore.loaders")
    model = pytest.importorskip("botocore.model")
    return model.ServiceModel(loaders.Loader().load_service_model("batch", "service-2"), "batch")


def botocore_problems(operation: str, params: Mapping[str, Any]) -> list[str]:
    """botocore's own validation of an operation's input (types, required and unknown members), plus
    the enum values it does not check."""
    validate = pytest.importorskip("botocore.validate").validate_parameters
    exceptions = pytest.importorskip("botocore.exceptions")
    shape = batch_service_model().operation_model(operation).input_shape
    try:
        validate(dict(params), shape)
    except exceptions.ParamValidationError as exc:
        return [str(exc)]
    problems: list[str] = []

    def walk(value: Any, shape: Any, path: str) -> None:
        if shape.type_name == "structure":
            for key, item in value.items():
                walk(item, shape.members[key], f"{path}.{key}")
        elif shape.type_name == "list":
            for i, item in enumerate(value):
                walk(item, shape.member, f"{path}[{i}]")
        elif shape.type_name == "map":
            for key, item in value.items():
                walk(item, shape.value, f"{path}.{key}")
        elif getattr(shape, "enum", None) and value not in shape.enum:
            problems.append(f"{path}: {value!r} is not one of {shape.enum}")

    walk(params, shape, operation)
    return problems


AWS_FILES = [
    ("job-definition.json", "RegisterJobDefinition"),
    ("submit-shards.json", "SubmitJob"),
    ("submit-collector.json", "SubmitJob"),
]


@pytest.mark.parametrize("name, operation", AWS_FILES)
def test_aws_batch_json_validates_against_botocore(name: str, operation: str) -> None:
    assert botocore_problems(operation, aws_json(name)) == []


def test_aws_batch_shapes() -> None:
    definition = aws_json("job-definition.json")
    props = definition["containerProperties"]
    assert definition["type"] == "container"
    assert {r["type"] for r in props["resourceRequirements"]} == {"VCPU", "MEMORY"}
    volumes = {v["name"]: v for v in props["volumes"]}
    (mount,) = props["mountPoints"]
    assert mount["containerPath"] == "/runs" and "efsVolumeConfiguration" in volumes[mount["sourceVolume"]]
    collector = aws_json("submit-collector.json")
    assert collector["dependsOn"] and all("type" not in d for d in collector["dependsOn"]), "the whole array"
    assert "arrayProperties" not in collector


def test_botocore_check_catches_mistakes() -> None:
    definition = aws_json("job-definition.json")
    unknown = copy.deepcopy(definition)
    unknown["containerProperties"]["mountPoint"] = []
    assert "mountPoint" in " ".join(botocore_problems("RegisterJobDefinition", unknown))
    enum = copy.deepcopy(definition)
    enum["containerProperties"]["resourceRequirements"][0]["type"] = "VCPUS"
    assert "VCPUS" in " ".join(botocore_problems("RegisterJobDefinition", enum))
    size = aws_json("submit-shards.json")
    size["arrayProperties"]["size"] = "8"
    assert botocore_problems("SubmitJob", size)


# -- Dockerfile -----------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_problems(
    dockerfile: str, dockerignore: str, scripts: Mapping[str, str], user: int
) -> list[str]:
    steps = dockerfile_instructions(dockerfile)
    problems = []
    args = {}
    for word, rest in steps:
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    stages: dict[str, str] = {}
    froms = []
    for word, rest in steps:
        if word == "FROM":
            parts = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), rest).split()
            froms.append(parts[0])
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages[parts[2]] = parts[0]
    if not froms or froms[-1] != "python:3.11-slim":
        problems.append(f"the final stage is {froms[-1:]}, not python:3.11-slim")
    else:
        version = froms[-1].split(":")[1].split("-")[0]
        if not SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(version + ".0"):
            problems.append(f"Python {version} does not meet requires-python")
    sources = [
        stages.get(m, m) for word, rest in steps if word == "COPY" for m in re.findall(r"--from=(\S+)", rest)
    ]
    if not any(s.startswith("ghcr.io/astral-sh/uv") for s in sources):
        problems.append("uv is not copied from ghcr.io/astral-sh/uv")
    syncs = [rest for word, rest in steps if word == "RUN" and "uv sync" in rest]
    if not syncs:
        problems.append("no uv sync")
    for rest in syncs:
        if "--locked" not in rest.split():
            problems.append(f"uv sync without --locked: {rest}")
    last = set(syncs[-1].split()) if syncs else set()
    if syncs and ("--no-install-project" in last or not {"--no-dev", "--no-editable"} <= last):
        problems.append("the last uv sync must install the project, --no-dev --no-editable")
    entries = [rest for word, rest in steps if word == "ENTRYPOINT"]
    try:
        entry = json.loads(entries[-1]) if entries else None
    except ValueError:
        entry = None  # the shell form: signals would go to the shell, not to batch-ingest
    if not (isinstance(entry, list) and entry and entry[0] in scripts):
        problems.append(
            f"ENTRYPOINT {entries[-1:]} is not a console script of {sorted(scripts)} in exec form"
        )
    users = [rest.split(":")[0] for word, rest in steps if word == "USER"]
    if not users or users[-1] in ("root", "0") or users[-1] != str(user):
        problems.append(f"USER {users[-1:]}: not root, and the uid the manifests run as ({user})")
    volumes = [
        v
        for word, rest in steps
        if word == "VOLUME"
        for v in (json.loads(rest) if rest.startswith("[") else rest.split())
    ]
    if "/runs" not in volumes:
        problems.append("/runs is not a VOLUME")
    ignored = [
        line.strip() for line in dockerignore.splitlines() if line.strip() and not line.startswith("#")
    ]
    for name in (".venv", ".git", "reports"):
        if name not in ignored:
            problems.append(f".dockerignore does not exclude {name}")
    for name in ("pyproject.toml", "uv.lock", "README.md", "batch_ingest"):
        if any(fnmatch.fnmatchcase(name, pattern.lstrip("/")) for pattern in ignored):
            problems.append(f".dockerignore excludes {name}, which the build needs")
    return problems


def run_as_user() -> int:
    """The uid the manifests run batch-ingest as (one for all)."""
    uids = set()
    for _, doc in DOCS:
        spec = pod_spec(doc)
        if spec is not None and our_containers(doc):
            uids.add(int(spec["securityContext"]["runAsUser"]))
    assert len(uids) == 1, uids
    return uids.pop()


def dockerfile_texts() -> tuple[str, str]:
    return (ROOT / "Dockerfile").read_text(encoding="utf-8"), (ROOT / ".dockerignore").read_text(
        encoding="utf-8"
    )


def test_dockerfile_installs_from_the_lock_and_runs_the_console_script() -> None:
    dockerfile, dockerignore = dockerfile_texts()
    scripts = PYPROJECT["project"]["scripts"]
    assert dockerfile_problems(dockerfile, dockerignore, scripts, run_as_user()) == []


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("uv sync --locked --no-dev --no-editable\n", "uv sync --no-dev --no-editable\n", "without --locked"),
        ("uv sync --locked --no-dev --no-editable\n", "uv sync --locked --no-editable\n", "--no-dev"),
        ("uv sync --locked --no-dev --no-editable\n", "uv pip install .\n", "--no-dev"),
        ("COPY --from=uv", "COPY --from=build", "uv is not copied"),
        ('ENTRYPOINT ["batch-ingest"]', 'ENTRYPOINT ["batch_ingest"]', "ENTRYPOINT"),
        ('ENTRYPOINT ["batch-ingest"]', "ENTRYPOINT batch-ingest", "ENTRYPOINT"),
        ("USER 10001:10001", "USER root", "USER"),
        ("FROM python:3.11-slim\n# The same", "FROM python:3.12-slim\n# The same", "final stage"),
        ('VOLUME ["/runs"]', "", "/runs"),
    ],
)
def test_dockerfile_check_catches_mistakes(old: str, new: str, expected: str) -> None:
    dockerfile, dockerignore = dockerfile_texts()
    assert old in dockerfile
    problems = dockerfile_problems(
        dockerfile.replace(old, new), dockerignore, PYPROJECT["project"]["scripts"], 10001
    )
    assert any(expected in p for p in problems), problems


def test_dockerignore_check_catches_an_excluded_lock() -> None:
    dockerfile, dockerignore = dockerfile_texts()
    problems = dockerfile_problems(
        dockerfile, dockerignore + "*.lock\n", PYPROJECT["project"]["scripts"], 10001
    )
    assert any("uv.lock" in p for p in problems)


def test_containers_run_from_the_image_entry_point() -> None:
    """Kubernetes `args` and AWS Batch `command` follow the image's ENTRYPOINT (batch-ingest), so they
    start with a subcommand; the Jobs mount the Dockerfile's VOLUME."""
    for job in docs_of("Job"):
        (container,) = our_containers(job)
        assert "command" not in container and container["args"][0] in main.commands
        assert "/runs" in {m["mountPath"] for m in container["volumeMounts"]}
    assert aws_json("job-definition.json")["containerProperties"]["command"][0] in main.commands
