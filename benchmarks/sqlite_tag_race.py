"""Why a joblib sweep once lost a variant's outcome: two processes setting one MLflow experiment tag
at the same moment on a SQLite store (what two sweep jobs finishing together do).

    .venv/bin/python benchmarks/sqlite_tag_race.py [--pairs 40]

MLflow's set_experiment_tag upserts with select-then-insert (session.merge): both processes find no
row, both insert, one fails with "UNIQUE constraint failed". Counts the failures of the raw call,
then of the same call through pipelines.track.mlflow_tracker._retry. Results: BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
from pathlib import Path


def _worker(uri: str, experiment: str, barrier, pairs: int, retried: bool, failures) -> None:
    from mlflow.tracking import MlflowClient

    from pipelines.track.mlflow_tracker import _retry

    client, failed = MlflowClient(tracking_uri=uri), []
    for i in range(pairs):
        barrier.wait()  # both processes call at once, as two jobs finishing together do
        try:
            if retried:
                _retry(client.set_experiment_tag, experiment, f"view{i}", "x")
            else:
                client.set_experiment_tag(experiment, f"view{i}", "x")
        except Exception as error:  # the failure being counted
            failed.append(str(error).splitlines()[0][:120])
    failures.put(failed)


def race(pairs: int, retried: bool) -> list[str]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{Path(tempfile.mkdtemp(prefix='qg-race-')) / 'mlflow.db'}"
    experiment = MlflowClient(tracking_uri=uri).create_experiment("race")
    barrier, failures = multiprocessing.Barrier(2), multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_worker, args=(uri, experiment, barrier, pairs, retried, failures))
               for _ in range(2)]
    for worker in workers:
        worker.start()
    failed = [message for _ in workers for message in failures.get()]
    for worker in workers:
        worker.join()
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40)
    pairs = parser.parse_args().pairs
    for retried in (False, True):
        failed = race(pairs, retried)
        label = "through _retry" if retried else "raw MLflow call"
        print(f"{label}: {len(failed)} of {2 * pairs} calls failed {sorted(set(failed))}")


if __name__ == "__main__":
    main()
