"""Operations: speed tests and the site acceptance check (vérification d'aptitude)."""
