"""Export stage: `wenzhen merge` (`merge.merge`: a LoRA adapter folded into its base, safetensors layouts in
`formats`) and `wenzhen export --format gguf` (`gguf.export_gguf`: llama.cpp and Ollama), each checked against its
source by `verify` before it is reported written."""
