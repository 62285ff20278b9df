"""run() only, no run_batch: deploying it with max_batch_size > 1 must fail, saying why."""


def init():
    pass


def run(raw_data):
    return raw_data
