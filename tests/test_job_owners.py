"""Who may read and cancel a job: its owner is the name of the client key that submitted
it; another key is refused by the commands and, cryptographically, by the job's holder;
a key listed in ``admins`` may act on anyone's job. Real cluster with CURVE keys."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import wait_for

from cluster.client import records
from cluster.client.spool import SpoolError
from cluster.client.spool_reader import RemoteSpool
from cluster.contract import security

SLOW = """
import time

def slow(x):
    time.sleep(0.05 if x < 5 else 600)
    return x
"""


@pytest.fixture
def keyring(tmp_path):
    """The cluster's keys with three users' client keys, and each user's own directory:
    their key pair, coordinator.key, the other users' public keys, and ``admins``: carol."""
    cluster_keys = tmp_path / "keys"
    security.generate(cluster_keys)
    users = ("alice", "bob", "carol")
    for user in users:
        security.generate_client(cluster_keys, user)
    dirs = {}
    for user in users:
        mine = tmp_path / f"keys-{user}"
        mine.mkdir(mode=0o700)
        shutil.copy2(cluster_keys / "coordinator.key", mine)
        for other in users:
            shutil.copy2(cluster_keys / f"client-{other}.key", mine)
        shutil.copy2(cluster_keys / f"client-{user}.key_secret", mine)
        (mine / "admins").write_text("# may read and cancel anyone's jobs\ncarol\n")
        dirs[user] = mine
    return cluster_keys, dirs


def test_a_job_belongs_to_its_key_and_only_its_owner_or_an_admin_may_act_on_it(local_cluster, keyring, tmp_path):
    cluster_keys, dirs = keyring
    local_cluster.extra_env.update(CLUSTER_INSECURE="", CLUSTER_KEYS=str(cluster_keys))
    coordinator = local_cluster.coordinator()
    local_cluster.agent("a1", 2)
    local_cluster.wait_ready(coordinator, ["a1"])
    (tmp_path / "slow.py").write_text(SLOW)

    def as_user(user: str, *args: str):
        return local_cluster.clusterctl(*args, env=dict(local_cluster.env, CLUSTER_KEYS=str(dirs[user])))

    res = as_user("alice", "submit", f"{tmp_path / 'slow.py'}:slow", "--range", "0", "8", "--detach")
    assert res.returncode == 0, res.stderr
    number = int(res.stdout)
    listed = json.loads(as_user("bob", "jobs", "--json").stdout)
    assert [(job["id"], job["owner"]) for job in listed] == [(number, "alice")]  # anyone may list

    for command in (("job", "results", str(number)), ("job", "cancel", str(number)), ("job", "rm", str(number))):
        refused = as_user("bob", *command)
        assert refused.returncode == 2, (command, refused.stdout, refused.stderr)
        assert refused.stderr.strip() == f"clusterctl: job {number} belongs to alice, not bob", command

    # Past the command's own check, the holder knows the reader by its CURVE key.
    def record():
        return records.find(local_cluster.kazoo, local_cluster.name, number)

    wait_for(lambda: record().record.endpoint, 30, what="the holder to serve the spool")
    wait_for(lambda: len(list(_read(record(), dirs["alice"]))) == 5, 60, what="the first five results")
    with pytest.raises(SpoolError, match=f"job {number} belongs to alice, not bob"):
        _read(record(), dirs["bob"])
    assert sorted(row[1] for row in _read(record(), dirs["carol"])) == [0, 1, 2, 3, 4]  # an admin reads it

    cancelled = as_user("carol", "job", "cancel", str(number))
    assert cancelled.returncode == 0, cancelled.stderr
    final = json.loads(as_user("alice", "job", "status", str(number), "--json").stdout)
    assert (final["state"], final["owner"], final["done"]) == ("cancelled", "alice", 5)


def _read(job: records.Listed, keys_dir) -> list:
    """The job's results as the holder serves them to the key in ``keys_dir``."""
    reader = RemoteSpool(job.id, job.record.endpoint, job.record.curve_key, str(keys_dir))
    try:
        return reader.rows("results", 0)
    finally:
        reader.close()


def test_a_keys_directory_with_several_users_secrets_is_a_clear_error(local_cluster, keyring, tmp_path):
    cluster_keys, dirs = keyring
    shutil.copy2(cluster_keys / "client-bob.key_secret", dirs["alice"])  # alice's directory, and bob's secret
    res = local_cluster.clusterctl("jobs", env=dict(local_cluster.env, CLUSTER_KEYS=str(dirs["alice"])))
    assert res.returncode == 2 and "several client secrets" in res.stderr
    assert records.owner(str(cluster_keys)) == "client"  # where the keys were made, generate's own key


def test_a_client_key_has_the_name_it_was_made_with(tmp_path, local_cluster):
    res = local_cluster.clusterctl("keys", "client", "dave", "--out", str(tmp_path / "k"))
    assert res.returncode == 0, res.stderr
    assert records.owner(str(tmp_path / "k")) == "dave"
    assert local_cluster.clusterctl("keys", "client", "dave", "--out", str(tmp_path / "k")).returncode == 2
    assert local_cluster.clusterctl("keys", "client", "../x", "--out", str(tmp_path / "k")).returncode == 2
