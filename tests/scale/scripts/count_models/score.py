import os


def init():
    pass


def run(raw_data):
    # several models: AZUREML_MODEL_DIR is azureml-models/, one folder per model name
    return {"models": len(os.listdir(os.environ["AZUREML_MODEL_DIR"]))}
