(function(){
  var url = document.body.getAttribute('data-etat'); if (!url) return;
  var labels = {en_attente:'en attente', en_cours:'en cours', termine:'terminé', erreur:'erreur',
                refuse:'non contacté', sans_images:"pas d'images",
                hors_cache:'à récupérer de nouveau', a_la_demande:"à l'ouverture"};
  function show(prefix, id, job){
    var bar = document.getElementById(prefix + '-bar-' + id);
    var state = document.getElementById(prefix + '-state-' + id);
    if (bar && job.total) { bar.max = job.total; bar.value = job.faits; }
    if (state) {
      var text = labels[job.etat] || job.etat;
      if (job.total) text += ' — ' + job.faits + '/' + job.total;
      if (job.message) text += ' — ' + job.message;
      state.textContent = text; state.className = 'state ' + job.etat.replace('_', '');
    }
  }
  function poll(){
    fetch(url, {credentials:'same-origin', headers:{Accept:'application/json'}})
      .then(function(r){ return r.ok ? r.json() : null; })
      .then(function(data){
        if (!data) return;
        var busy = false;
        [['images', data.images], ['export', data.exports]].forEach(function(pair){
          Object.keys(pair[1] || {}).forEach(function(id){
            var job = pair[1][id]; show(pair[0], id, job);
            if (job.etat === 'en_cours' || job.etat === 'en_attente') busy = true;
          });
        });
        if (busy) setTimeout(poll, 1000);
      }).catch(function(){ setTimeout(poll, 3000); });
  }
  poll();
})();
