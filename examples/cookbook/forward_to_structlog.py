"""Forward tracedmp's records to your own structlog setup as well as the trace file."""

import structlog

import tracedmp

log = structlog.get_logger("tracedmp")


def forward(logger, method_name, event_dict):
    if event_dict["event"] in ("pickle_error", "process_start"):
        fields = {k: v for k, v in event_dict.items() if k != "event"}
        log.info(f"tracedmp.{event_dict['event']}", **fields)
    return event_dict


def child():
    pass


if __name__ == "__main__":
    tracedmp.configure(trace="trace.jsonl", processors=[forward])
    p = tracedmp.get_context("spawn").Process(target=child)
    p.start()
    p.join()
