"""joblib: what loky pickles for each Parallel call, and what joblib does with a large array.

    tracedmp run --trace trace.jsonl examples/joblib_arrays.py && tracedmp report trace.jsonl
"""

import numpy as np
from joblib import Parallel, delayed


def row_sum(data, i):
    return float(data[i].sum())


if __name__ == "__main__":
    data = np.ones((200, 5000))  # 8 MB
    # Above max_nbytes (1 MB): joblib writes it to a file once, each batch carries a reference.
    print(sum(Parallel(n_jobs=2)(delayed(row_sum)(data, i) for i in range(40))))
    # max_nbytes=None: the array is copied into every batch.
    print(sum(Parallel(n_jobs=2, max_nbytes=None, batch_size=1)(
        delayed(row_sum)(data, i) for i in range(12))))
    # Threads share the array: nothing to pickle.
    print(sum(Parallel(n_jobs=2, backend="threading")(
        delayed(row_sum)(data, i) for i in range(10))))
