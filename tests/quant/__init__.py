"""Tests of lowc.quant (a package so that test module names cannot collide with other folders)."""
