"""Apps built on the library: the demo (train, evaluate, report), the smoke run, and the description of the
machine that reports and benchmarks name. They import the library; the library never imports them."""
