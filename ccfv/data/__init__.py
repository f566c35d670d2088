"""Data for the benchmark: the synthetic MSD-layout demo tasks (``ccfv.data.synthetic``)."""

from .synthetic import DEMO_TASKS, SyntheticCase, SyntheticTask, generate_case, get_task, write_demo, write_task

__all__ = ["DEMO_TASKS", "SyntheticCase", "SyntheticTask", "generate_case", "get_task", "write_demo", "write_task"]
