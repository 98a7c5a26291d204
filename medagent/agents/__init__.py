"""Expert and baseline agents and the MLLM policy. Arrives with issue 7."""
