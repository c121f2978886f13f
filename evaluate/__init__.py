"""slimlab evaluation: tasks, prompts, generation, answer parsing, scoring, profiling and reports."""
