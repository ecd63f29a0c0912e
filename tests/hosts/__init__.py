"""Tests of lib_deepcache.hosts."""
