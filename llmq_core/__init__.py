"""llmq: the quantizers, evaluators, data and results store behind the study's notebooks."""

import warnings

# transformers, datasets and lm-eval draw progress bars through tqdm.auto, which warns inside a notebook
# without ipywidgets; plain text bars are what a saved notebook should hold.
warnings.filterwarnings("ignore", message="IProgress not found")
