"""The fleet simulator: many agents on one PC with real skill code, faults and reports.

Not built yet; the package exists so the layout and install are fixed now.
"""
