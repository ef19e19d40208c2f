"""The bundled default model (decoder-29m, 29M parameters, float16 safetensors) and how models are located."""
