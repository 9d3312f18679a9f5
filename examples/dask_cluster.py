"""A Dask LocalCluster program with the three classic costs: a __main__ function sent by value
with every task, an array embedded in the graph, and the same data scattered again and again.

    tracedmp run --trace trace.jsonl examples/dask_cluster.py && tracedmp report trace.jsonl
"""

import numpy as np
from distributed import Client, LocalCluster


def score(x, weights):
    return float(x * weights.sum())


def main():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        weights = np.ones(250_000)  # 2 MB, embedded in the graph: sent with every task
        futures = [client.submit(score, x, weights) for x in range(20)]
        print(sum(client.gather(futures)))
        table = np.arange(100_000)
        for _ in range(5):  # scattered again each time: sent again each time
            [remote] = client.scatter([table])
        print(client.submit(np.sum, remote).result())


if __name__ == "__main__":
    main()
