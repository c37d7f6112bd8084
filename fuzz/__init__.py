"""Hypothesis strategies and fuzz campaigns for trioserve's protocols."""
