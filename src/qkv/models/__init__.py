"""Model families built from ``qkv.nn`` layers."""

from .decoder import GPT
from .decoder_classifier import GPTClassifier
from .encoder import BERT, BertClassifier, BertQA, BertTagger, Encoder
from .output import ModelOutput
from .seq2seq import EncoderDecoder
from .cnn import CNN
from .swin import Swin
from .vision import ViT

MODEL_TYPES = {GPT.model_type: GPT, EncoderDecoder.model_type: EncoderDecoder}   # config.json "model_type" -> class
MODEL_TYPES.update({cls.model_type: cls for cls in (Encoder, BERT, BertClassifier, BertTagger, BertQA, ViT, Swin, CNN,
                                                 GPTClassifier)})
IMAGE_MODELS = {"vit": ViT, "swin": Swin, "cnn": CNN}              # VisionConfig.model -> class

__all__ = ["GPT", "GPTClassifier", "EncoderDecoder", "ModelOutput", "MODEL_TYPES", "Encoder", "BERT", "BertClassifier",
           "BertTagger", "BertQA", "ViT", "Swin", "CNN", "IMAGE_MODELS"]
