"""The benchmark of issue 6 (not part of the default test run; `test_smoke.py` is).

    python -m tests.bench [--events 500000] [--out bench-results/run.json] [--profile]

See `measure.py` for what each stage measures and `../../docs/performance.md` for results.
"""
