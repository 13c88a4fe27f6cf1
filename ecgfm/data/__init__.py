"""Reading ECGs from the files datasets ship as, preprocessing, and synthetic datasets."""
