"""Tests of lib_deepcache.engine."""
