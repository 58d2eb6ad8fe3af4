"""`upak redis backup` / `restore` on real servers: consistent snapshots under load, restored
into a fresh redis-server; and every failure one line with no partial file left behind."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests.ops.conftest import hardened_env, run_cli, tmpfs
from tests.support.redis_servers import RedisServer, redis_server
from upak.ops.backup import bgsave_and_wait, prune
from upak.ops.diagnose import OpsError
from upak.ops.rdb import RdbError, crc64, verify_rdb


def backup(server: RedisServer, dest: Path, *args: str, env: dict | None = None) -> dict:
    result = run_cli(
        "backup", "--dest", str(dest), "--json", *args, env=env or {"REDIS_URL": server.url}
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def restored_contents(backup_file: Path) -> dict[bytes, bytes]:
    """Restore into a fresh, stopped redis-server with the CLI, start it, read every key."""
    with redis_server() as fresh:
        fresh.kill()
        result = run_cli(
            "restore",
            str(backup_file),
            "--data-dir",
            str(fresh.workdir),
            env={"REDIS_URL": fresh.url},
        )
        assert result.exit_code == 0, result.output
        fresh.start()
        client = fresh.client()
        keys = list(client.scan_iter(count=1000))
        return dict(zip(keys, client.mget(keys), strict=True)) if keys else {}


def write_keys(server: RedisServer, count: int, started: threading.Event) -> None:
    client = server.client()
    for start in range(0, count, 20):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + 20):
            pipe.set(f"upak:cache:k{i:04d}", f"value-{i}-" + "x" * (i % 50))
        pipe.execute()
        started.set()
        time.sleep(0.002)


def expected_value(i: int) -> bytes:
    return (f"value-{i}-" + "x" * (i % 50)).encode()


def assert_consistent_prefix(contents: dict[bytes, bytes]) -> int:
    """A snapshot of a sequential writer: keys 0..n-1, each with its exact value."""
    n = len(contents)
    assert contents == {f"upak:cache:k{i:04d}".encode(): expected_value(i) for i in range(n)}
    return n


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["file", "stream"])
def test_backup_under_load_restores_the_same_keys(tmp_path: Path, mode: str):
    with redis_server() as server:
        started = threading.Event()
        writer = threading.Thread(target=write_keys, args=(server, 1000, started))
        writer.start()
        started.wait(5)
        args = ("--stream",) if mode == "stream" else ()
        during = backup(server, tmp_path, *args)
        writer.join()
        # The snapshot taken while writing is a consistent prefix of the writes...
        taken = assert_consistent_prefix(restored_contents(Path(during["path"])))
        assert 0 < taken <= 1000
        # ...and one taken after holds all 1,000 keys with the same values.
        after = backup(server, tmp_path, *args)
        contents = restored_contents(Path(after["path"]))
        assert assert_consistent_prefix(contents) == 1000
        source = server.client()
        assert all(source.get(k) == v for k, v in contents.items())
        assert after["source"].startswith("sync:" if mode == "stream" else "file:")


def test_backup_writes_checksum_and_keeps_n(shared_redis: RedisServer, tmp_path: Path):
    shared_redis.client().set("upak:sessions:one", "1")
    results = [backup(shared_redis, tmp_path, "--keep", "2") for _ in range(3)]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len([n for n in names if n.endswith(".rdb")]) == 2
    assert not [n for n in names if n.startswith(".")]  # no temp files
    newest = Path(results[-1]["path"])
    digest, name = (newest.with_name(newest.name + ".sha256")).read_text().split()
    assert name == newest.name
    assert digest == hashlib.sha256(newest.read_bytes()).hexdigest() == results[-1]["sha256"]
    assert results[-1]["removed"] and not Path(results[0]["path"]).exists()
    assert results[-1]["verified_by"] == "redis-check-rdb"
    assert newest.stat().st_mode & 0o077 == 0  # sessions inside: owner only


def test_backup_as_ops_user_with_renamed_config(hardened_redis: RedisServer, tmp_path: Path):
    result = backup(hardened_redis, tmp_path, env=hardened_env(hardened_redis))
    assert Path(result["path"]).exists()


def test_renamed_config_without_rdb_path_is_one_line(hardened_redis: RedisServer, tmp_path):
    env = hardened_env(hardened_redis)
    env.pop("UPAK_CONFIG_COMMAND")
    result = run_cli("backup", "--dest", str(tmp_path), env=env)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "CONFIG is renamed or denied" in result.stderr
    assert "--rdb-path" in result.stderr and list(tmp_path.iterdir()) == []
    # Told where the dump is, it works without CONFIG.
    rdb = hardened_redis.workdir / "dump.rdb"
    ok = run_cli("backup", "--dest", str(tmp_path), "--rdb-path", str(rdb), env=env)
    assert ok.exit_code == 0, ok.output


def test_wrong_password_and_unreachable_are_one_line(hardened_redis: RedisServer, tmp_path):
    for url, words in (
        (f"redis://:nope@127.0.0.1:{hardened_redis.port}/0", "authentication failed"),
        ("redis://127.0.0.1:1/0", "connection refused"),
    ):
        result = run_cli("backup", "--dest", str(tmp_path), env={"REDIS_URL": url})
        assert result.exit_code == 1 and words in result.stderr
        assert result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_bgsave_already_running(fresh_redis: RedisServer, tmp_path: Path):
    client = fresh_redis.client()
    # Make a save slow enough to overlap: enough data, throttled with rdb-key-save-delay.
    pipe = client.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"upak:cache:{i}", "v")
    pipe.execute()
    client.config_set("rdb-key-save-delay", "1000")  # 1 ms per key: a ~2 s save
    client.bgsave()
    try:
        result = run_cli("backup", "--dest", str(tmp_path), env={"REDIS_URL": fresh_redis.url})
        assert result.exit_code == 1
        assert "a BGSAVE is already running" in result.stderr
        assert result.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []
    finally:
        client.config_set("rdb-key-save-delay", "0")
    # --wait-running waits for it and then takes its own.
    ok = run_cli(
        "backup",
        "--dest",
        str(tmp_path),
        "--wait-running",
        "--json",
        env={"REDIS_URL": fresh_redis.url},
    )
    assert ok.exit_code == 0, ok.output


def test_bgsave_failure_on_the_server_is_reported(tmp_path: Path):
    with tmpfs(tmp_path / "server-disk", "size=64k") as disk, redis_server() as server:
        server.kill()
        server.workdir = disk
        server.start()
        client = server.client()
        client.mset({f"upak:cache:{i}": os.urandom(100) for i in range(2000)})
        with pytest.raises(OpsError, match="BGSAVE failed on the server"):
            bgsave_and_wait(client)
        server.kill()


def test_non_writable_destination(shared_redis: RedisServer, tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli("backup", "--dest", str(blocker / "sub"), env={"REDIS_URL": shared_redis.url})
    assert result.exit_code == 1 and "cannot create the destination" in result.stderr
    with tmpfs(tmp_path / "ro", "ro,size=64k") as readonly:
        result = run_cli("backup", "--dest", str(readonly), env={"REDIS_URL": shared_redis.url})
        assert result.exit_code == 1
        assert result.stderr.count("\n") == 1
        assert "not writable" in result.stderr or "read-only" in result.stderr


def test_full_disk_leaves_no_partial_file(fresh_redis: RedisServer, tmp_path: Path):
    fresh_redis.client().mset({f"upak:cache:{i}": os.urandom(100) for i in range(2000)})
    with tmpfs(tmp_path / "small", "size=64k") as small:
        for extra in ((), ("--stream",)):
            result = run_cli(
                "backup", "--dest", str(small), *extra, env={"REDIS_URL": fresh_redis.url}
            )
            assert result.exit_code == 1, result.output
            assert "no space left on the device" in result.stderr
            assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
            assert list(small.iterdir()) == []


def test_restore_refuses_a_running_server(shared_redis: RedisServer, tmp_path: Path):
    made = backup(shared_redis, tmp_path / "b")
    result = run_cli(
        "restore", made["path"], "--data-dir", str(tmp_path), env={"REDIS_URL": shared_redis.url}
    )
    assert result.exit_code == 1 and "Redis is running" in result.stderr
    assert not (tmp_path / "dump.rdb").exists()


def test_restore_refuses_a_tampered_backup(shared_redis: RedisServer, tmp_path: Path):
    made = Path(backup(shared_redis, tmp_path / "b")["path"])
    data = bytearray(made.read_bytes())
    data[12] ^= 0xFF
    made.write_bytes(bytes(data))
    result = run_cli(
        "restore",
        str(made),
        "--data-dir",
        str(tmp_path),
        env={"REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert result.exit_code == 1 and "does not match its .sha256" in result.stderr


def test_restore_keeps_the_previous_dump(shared_redis: RedisServer, tmp_path: Path):
    made = backup(shared_redis, tmp_path / "b")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dump.rdb").write_bytes(b"old")
    (data_dir / "appendonlydir").mkdir()
    result = run_cli(
        "restore",
        made["path"],
        "--data-dir",
        str(data_dir),
        "--json",
        env={"REDIS_URL": "redis://127.0.0.1:1/0"},
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert Path(body["previous"]).read_bytes() == b"old"
    assert body["aof_moved"] and not (data_dir / "appendonlydir").exists()
    assert (data_dir / "dump.rdb").read_bytes() == Path(made["path"]).read_bytes()


def test_stream_backup_over_tls(tls_redis: RedisServer, tls_files, tmp_path: Path):
    """--stream opens its own socket: TLS as the store's connection sets it up."""
    tls_redis.client().set("upak:sessions:tls", "1")
    env = {
        "REDIS_URL": f"rediss://127.0.0.1:{tls_redis.port}/0",
        "REDIS_SSL_CA_CERTS": tls_files["ca"],
    }
    made = backup(tls_redis, tmp_path, "--stream", env=env)
    assert made["source"].startswith("sync:")
    assert restored_contents(Path(made["path"]))[b"upak:sessions:tls"] == b"1"
    refused = run_cli(
        "backup", "--dest", str(tmp_path / "x"), "--stream",
        env={"REDIS_URL": env["REDIS_URL"]},  # no CA: the server's certificate is unknown
    )  # fmt: skip
    assert refused.exit_code == 1 and "certificate verify failed" in refused.stderr


def _prom_values(path: Path) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(path.read_text())
    return {s.name: s.value for family in families for s in family.samples}


def test_backup_leaves_a_timestamp_for_the_alert(shared_redis: RedisServer, tmp_path: Path):
    prom = tmp_path / "textfile" / "upak_redis_backup.prom"
    prom.parent.mkdir()
    before = time.time()
    result = backup(shared_redis, tmp_path / "b", "--metrics-file", str(prom))
    values = _prom_values(prom)
    assert before <= values["upak_redis_backup_last_success_timestamp_seconds"] <= time.time()
    assert values["upak_redis_backup_last_size_bytes"] == result["size"]
    assert [p.name for p in prom.parent.iterdir()] == [prom.name]  # no temporary file left
    # A failed run leaves the last success's time in place: that is what the alert watches.
    stamp = prom.read_text()
    failed = run_cli(
        "backup", "--dest", str(tmp_path / "b"), "--metrics-file", str(prom),
        env={"REDIS_URL": "redis://127.0.0.1:1/0"},
    )  # fmt: skip
    assert failed.exit_code == 1 and prom.read_text() == stamp


def test_unwritable_metrics_file_is_one_line(shared_redis: RedisServer, tmp_path: Path):
    prom = tmp_path / "missing-dir" / "upak_redis_backup.prom"
    result = run_cli(
        "backup", "--dest", str(tmp_path / "b"), "--metrics-file", str(prom),
        env={"REDIS_URL": shared_redis.url},
    )  # fmt: skip
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert "the backup" in result.stderr and "metrics file" in result.stderr
    assert "Traceback" not in result.output


# --- RDB verification without redis-check-rdb ----------------------------------------------


def test_crc64_matches_redis():
    assert crc64(b"123456789") == 0xE9C6D914C4B8D9CA


def test_python_verification_of_a_real_dump(shared_redis: RedisServer, tmp_path: Path):
    made = Path(backup(shared_redis, tmp_path)["path"])
    assert verify_rdb(made, use_tool=False).by == "header+crc64"
    data = bytearray(made.read_bytes())
    data[len(data) // 2] ^= 0x01
    broken = tmp_path / "broken.rdb"
    broken.write_bytes(bytes(data))
    with pytest.raises(RdbError, match="checksum mismatch"):
        verify_rdb(broken, use_tool=False)
    with pytest.raises(RdbError):
        verify_rdb(broken, use_tool=True)
    truncated = tmp_path / "truncated.rdb"
    truncated.write_bytes(made.read_bytes()[:-20])
    with pytest.raises(RdbError):
        verify_rdb(truncated, use_tool=False)
    not_rdb = tmp_path / "x.rdb"
    not_rdb.write_bytes(b"hello world, not a dump")
    with pytest.raises(RdbError, match="not an RDB file"):
        verify_rdb(not_rdb, use_tool=False)


def test_prune_keeps_the_newest(tmp_path: Path):
    for stamp in ("20250101-000000", "20250102-000000", "20250103-000000"):
        (tmp_path / f"dump-{stamp}.rdb").write_text("x")
        (tmp_path / f"dump-{stamp}.rdb.sha256").write_text("x")
    removed = prune(tmp_path, 1)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dump-20250103-000000.rdb",
        "dump-20250103-000000.rdb.sha256",
    ]
