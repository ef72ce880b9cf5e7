"""Data: sources -> SentencePiece tokenizer -> token cache -> unique-token budget -> Grain."""
