"""Evaluation harness: metrics, tasks, backends, runner."""
