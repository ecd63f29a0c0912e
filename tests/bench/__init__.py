"""Tests of lib_deepcache.bench."""
