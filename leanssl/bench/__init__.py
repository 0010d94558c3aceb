"""`leanssl bench`: methods x data fractions x backbones -> cost and accuracy, with a report.

    grid.py    the cells (a method, or a variant: a method with settings given) and the profiles
    run.py     the driver: one process per cell, finished cells skipped, results.json / results.csv
    cell.py    one cell: train, count FLOPs, evaluate, measure the accuracy curve
    flops.py   training FLOPs per image with torch's FLOP counter
    report.py  report.md, the PNG plots and the paper's claims checked against the numbers
"""
