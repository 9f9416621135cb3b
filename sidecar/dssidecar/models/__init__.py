"""Model code (Llama/Qwen2 on a paged KV pool), tokenizer and checkpoint loader."""
