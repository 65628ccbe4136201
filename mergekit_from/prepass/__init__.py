"""The whole-model pre-passes (FW-Merging, RegMean) that run before mergekit.

mergekit 0.1.5 calls a merge method one tensor at a time, so a method that needs the whole model
(a loss, a gradient, activations) computes what it needs here first and writes a side file; its
per-tensor kernel in :mod:`mergekit_from.methods` applies the result inside mergekit's executor.
This package sits above the kernels: it imports them, never the other way round.

- :mod:`.registry`: method name -> pre-pass factory and settings model (what ``recipe`` uses);
- :mod:`.settings`: the pydantic settings, one base for every pre-pass;
- :mod:`.pool`, :mod:`.recipe_data`: the models and the data files a pre-pass reads;
- :mod:`.objective`: the causal-LM harness and losses; :mod:`.evaluation`: calibration losses;
- :mod:`.fw`, :mod:`.fw_init`, :mod:`.lmo`, :mod:`.trace`, :mod:`.plot`: FW-Merging;
- :mod:`.regmean`: RegMean's Gram pass.
"""
