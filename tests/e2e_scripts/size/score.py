def init():
    pass


def run(raw_data):
    return {"length": len(raw_data)}
