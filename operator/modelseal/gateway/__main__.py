"""``python -m modelseal.gateway``: run the gateway with settings from MODELSEAL_* env."""

from modelseal.config import load_settings
from modelseal.gateway import run

run(load_settings())
