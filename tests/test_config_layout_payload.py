"""Config precedence and errors, znode records, payload encodings."""

from __future__ import annotations

import json
import sys

import cloudpickle
import msgpack
import pytest

from cluster.contract import config, layout, payload
from cluster.contract.layout import AgentRecord, BadRecord, LeaderRecord


def test_precedence_defaults_toml_env_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('zk = "zk-file:2181"\ncluster = "filecluster"\n[agent]\nworkers = "3"\nlabels = {rack = "r1"}\n')
    cfg = config.load(config.AgentConfig, f, {}, environ={})
    assert (cfg.zk, cfg.cluster, cfg.workers, cfg.labels) == ("zk-file:2181", "filecluster", "3", {"rack": "r1"})
    env = {"CLUSTER_ZK": "zk-env:2181", "CLUSTER_AGENT_WORKERS": "5"}
    cfg = config.load(config.AgentConfig, f, {}, environ=env)
    assert (cfg.zk, cfg.workers) == ("zk-env:2181", "5")
    cfg = config.load(config.AgentConfig, f, {"zk": "zk-flag:1", "workers": None}, environ=env)
    assert (cfg.zk, cfg.workers, cfg.cluster) == ("zk-flag:1", "5", "filecluster")
    assert config.load(config.CoordinatorConfig, None, {}, environ={}).heartbeat_misses == 4


@pytest.mark.parametrize(
    "text,needle",
    [
        ("[agent]\nbogus = 1\n", "unknown setting 'bogus'"),
        ("[agent]\nheartbeat_interval = 'fast'\n", "heartbeat_interval"),
        ("[agent\n", "not valid TOML"),
        ("[coordinator]\njob_window = -5\n", "job_window"),
    ],
)
def test_bad_config_names_its_source(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    cls = config.CoordinatorConfig if "coordinator" in text else config.AgentConfig
    with pytest.raises(config.ConfigError, match=needle):
        config.load(cls, f, {}, environ={})


def test_bad_env_and_missing_file():
    with pytest.raises(config.ConfigError, match="CLUSTER_AGENT_HEARTBEAT_MISSES"):
        config.load(config.AgentConfig, None, {}, environ={"CLUSTER_AGENT_HEARTBEAT_MISSES": "many"})
    with pytest.raises(config.ConfigError, match="cannot read config file"):
        config.load(config.AgentConfig, "/nonexistent.toml", {}, environ={})
    with pytest.raises(config.ConfigError, match="key=value"):
        config.parse_labels(["novalue"])


def test_example_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "configs"
    files = sorted(root.glob("*.toml"))
    assert files, "configs/ has examples"
    for f in files:
        config.load(config.AgentConfig, f, {}, environ={})
        config.load(config.CoordinatorConfig, f, {}, environ={})
        config.load(config.RelayConfig, f, {}, environ={})
    assert config.load(config.RelayConfig, root / "relay.toml", {}, environ={}).relay_id == "rack-12"


RECORD = dict(
    node_id="n1",
    host="h",
    endpoint="tcp://10.0.0.1:5000",
    workers=2,
    cores=2,
    memory=1 << 30,
    version="0.1.0",
    protocol=1,
    pid=42,
    started=1.0,
)


def test_agent_record_round_trip_and_garbage():
    rec = AgentRecord(**RECORD, labels={"a": "b"})
    assert AgentRecord.from_bytes(rec.to_bytes()) == rec
    for bad in [
        None,
        b"",
        b"\xff",
        b"[]",
        b"{}",
        json.dumps(dict(RECORD, workers="2")).encode(),
        json.dumps(dict(RECORD, state="zombie")).encode(),
        json.dumps(dict(RECORD, endpoint="x")).encode(),
        b"{" + b" " * (layout.MAX_RECORD_BYTES + 1) + b"}",
    ]:
        with pytest.raises(BadRecord):
            AgentRecord.from_bytes(bad)
    with pytest.raises(BadRecord):
        LeaderRecord.from_bytes(b'{"epoch": "1"}')


def test_names_are_checked():
    assert layout.agent_path("c", "node-1.x") == "/clusterd/c/agents/node-1.x"
    for bad in ["", "../x", "a/b", "-lead", "x" * 200]:
        with pytest.raises(ValueError):
            layout.agent_path("c", bad)


def test_results_json_or_marked_repr_and_errors():
    from decimal import Decimal

    assert json.loads(payload.pack_result([1, "a"], payload.RESULT_JSON)) == {"result": [1, "a"]}
    assert json.loads(payload.pack_result(Decimal("1.5"), payload.RESULT_JSON)) == {"repr": "Decimal('1.5')"}
    assert json.loads(payload.pack_result(float("nan"), payload.RESULT_JSON)) == {"repr": "nan"}
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        record = payload.load_error(payload.pack_error(exc, payload.RESULT_PICKLE))
    assert record["type"] == "ValueError" and "bad input" in record["traceback"]
    rebuilt = payload.error_to_exception(record)
    assert isinstance(rebuilt, ValueError) and isinstance(rebuilt.__cause__, payload.RemoteTraceback)
    assert payload.load_error(b"garbage")["type"] == "TaskError"


def test_shell_runner_quotes_and_truncates():
    run = payload.load_function(payload.pack_shell("printf '%s' {}"))
    assert run("a b; rm -rf /")["stdout"] == "a b; rm -rf /"
    big = payload.load_function(payload.pack_shell("head -c 100000 /dev/zero | tr '\\\\0' x; true"))("")
    assert len(big["stdout"]) < 70_000 and "truncated" in big["stdout"]
    with pytest.raises(payload.CommandFailed) as info:
        payload.load_function(payload.pack_shell("exit 4"))("")
    assert info.value.args[1]["exit"] == 4


def test_function_blobs_of_earlier_clients_still_load():
    """A new agent under an old client, during an upgrade: b"P" and b"R" as they sent them."""
    assert payload.load_function(b"P" + cloudpickle.dumps(lambda x: x + 1))(1) == 2
    assert payload.load_function(b"R" + msgpack.packb({"module": "math", "func": "sqrt"}))(9) == 3
    shipped_file = {"module": "earlier_job", "func": "f", "source": "def f(x):\n    return -x\n", "filename": "/a/x.py"}
    try:
        assert payload.load_function(b"R" + msgpack.packb(shipped_file))(4) == -4
    finally:
        sys.modules.pop("earlier_job", None)


@pytest.mark.parametrize(
    "value",
    [
        ((b"\x01" * (1 << 20),), {}),
        (("s" * 70_000, [b"b" * 70_000, 3]), {"k": "v" * 70_000}),
        ((b"small", 1.5), {}),
        ((lambda x: x,), {}),
    ],
    ids=["bytes", "nested", "small", "code"],
)
def test_arguments_and_results_round_trip_whatever_their_size(value):
    blob = payload.pack_args(*value)
    args, kwargs = payload.load_args(blob)
    if callable(value[0][0]):
        assert args[0](7) == 7  # code goes through cloudpickle, by value
        return
    assert (args, kwargs) == value
    assert payload.load_result(payload.pack_result(value, payload.RESULT_PICKLE), payload.RESULT_PICKLE) == value


def test_a_large_payload_is_written_once_not_into_a_buffer_twice_its_size():
    """pickle.dumps grows its buffer to twice a large string and shrinks it after: a fresh
    mmap and a page fault per 4 KiB per task. Big payloads are pickled through a file."""
    import tracemalloc

    blob = b"\x02" * (4 << 20)
    tracemalloc.start()
    try:
        packed = payload.pack_args((blob,))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(packed) > len(blob)
    assert peak < 1.5 * len(blob), f"pickling 4 MiB peaked at {peak / 2**20:.1f} MiB"
