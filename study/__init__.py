"""Study orchestration: sweeps of ``wrf4cir.fit`` trials on Ray Tune, with Optuna search.

Reads study specs (``experiments/*.yaml``), expands grids, runs trials as Ray Tune
function trainables, records every trial and epoch in a ledger, resumes and extends
studies, and exports parquet. It calls the library only through ``wrf4cir.fit``.
"""
