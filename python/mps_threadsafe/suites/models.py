"""The suites' model names, without importing torch (the CLI validates --models with these
before anything heavy loads). workloads.py builds them and checks it has exactly these."""

ALL_MODELS = ("linear", "mlp", "transformer", "story_block", "linear_256", "matmul_512",
              "transformer_6x512")
BENCH_MODELS = ("linear", "mlp", "transformer")
SERVE_MODELS = ("transformer", "story_block")
STRESS_MODELS = ("linear", "mlp", "transformer", "linear_256", "matmul_512", "transformer_6x512")
