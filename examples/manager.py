"""A Manager: every proxy call is a message both ways.

    tracedmp run --trace trace.jsonl examples/manager.py
    tracedmp report trace.jsonl --channel manager

Each `shared[key] = value` pickles the method name and arguments in the client and the reply in
the manager's server process: the trace shows both sides of the conversation.
"""

import multiprocessing


def count_words(shared, lock, text):
    for word in text.split():
        with lock:  # get-then-set from two processes would race: one more round trip each
            shared[word] = shared.get(word, 0) + 1


def main() -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        shared, lock = manager.dict(), manager.Lock()
        workers = [ctx.Process(target=count_words, args=(shared, lock, text))
                   for text in ("a b a", "b c")]
        for p in workers:
            p.start()
        for p in workers:
            p.join()
        print(sorted(shared.items()))


if __name__ == "__main__":
    main()
