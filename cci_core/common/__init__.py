"""Small helpers every stage uses: device choice, seeding, image grids, torch data over a corpus."""
