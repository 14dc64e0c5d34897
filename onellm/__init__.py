"""onellm: align every modality with a language model.

Importing the package registers the model with the transformers Auto classes, so a saved checkpoint
loads through ``AutoModelForImageTextToText`` / ``AutoModelForCausalLM`` / ``AutoProcessor``.
"""

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from onellm.configuration import OneLLMConfig
from onellm.modeling import OneLLMForConditionalGeneration
from onellm.processing import OneLLMProcessor

AutoConfig.register("onellm", OneLLMConfig, exist_ok=True)
AutoModelForImageTextToText.register(OneLLMConfig, OneLLMForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(OneLLMConfig, OneLLMForConditionalGeneration, exist_ok=True)
AutoProcessor.register(OneLLMConfig, OneLLMProcessor, exist_ok=True)

__version__ = "0.1.0"
__all__ = ["OneLLMConfig", "OneLLMForConditionalGeneration", "OneLLMProcessor"]
