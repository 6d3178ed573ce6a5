"""What the toy demo adds on top of the libraries: its report (``report``: the headline ratios,
GIFs and curves) and the trajectory-response probe (``response``). No Prefect here either; the
demo's tasks and flow wrap these."""
