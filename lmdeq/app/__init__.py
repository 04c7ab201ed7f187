"""The application on top of the library: data loading, training, benchmarks, the command line and their
plumbing (``data``, ``train``, ``bench``, ``cli``, ``info``; ``allocator``, ``argtypes``, ``atomic``, ``faults``,
``torch_files``, ``command``). The library (``lmdeq.errors`` / ``checks`` / ``numerics``, ``kernels``, ``_C``,
``cuda_graphs``, ``ops``, ``solvers``, ``deq``, ``models``, ``integrations``) never imports it."""
