"""wenzhen (问诊): fine-tune ChatGLM3-6B or any Hugging Face chat model into a Chinese medical consultation model,
evaluate it, merge it and serve it, on today's transformers with no remote code."""

__version__ = "0.1.0"
