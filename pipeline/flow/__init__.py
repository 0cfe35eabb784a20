"""What the stages share: the items that travel between them (`frames`), the loop
every stage runs (`loop.map_stage`) and each stage's time accounting (`stats`)."""
